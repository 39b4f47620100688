"""`X-Total-Count` and RFC 8288 `Link` headers for list endpoints."""

from __future__ import annotations

from fastapi import Request, Response


def set_page_headers(request: Request, response: Response, total: int, limit: int, offset: int) -> None:
    """Set `X-Total-Count: <total>` and a `Link` header with first/prev/next/last relations."""
    response.headers["X-Total-Count"] = str(total)
    links = []

    def url(new_offset: int) -> str:
        return str(request.url.include_query_params(limit=limit, offset=new_offset))

    links.append(f'<{url(0)}>; rel="first"')
    if offset > 0:
        links.append(f'<{url(max(0, offset - limit))}>; rel="prev"')
    if offset + limit < total:
        links.append(f'<{url(offset + limit)}>; rel="next"')
    last = max(0, ((total - 1) // limit) * limit) if total else 0
    links.append(f'<{url(last)}>; rel="last"')
    response.headers["Link"] = ", ".join(links)
