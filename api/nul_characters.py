"""No NUL character anywhere in a request (CONTRACT.md, "Core API": a string holding a NUL character
is a 400 `Invalid input`; the store API answers it as its other validation failures).

PostgreSQL's text types cannot hold U+0000, so a NUL that reached a statement was a 500; RFC 9110,
section 5.5, calls a field value holding NUL invalid and dangerous. The rule is kept in one place, at
the edge: `reject_nul_characters` is a dependency of the whole application (run before every route's
own dependencies and validation), so a new route or schema cannot forget it. It looks at the path
parameters, the query parameters, the header values and every string (value or object key) of a
JSON body, and raises `RequestValidationError` with one error per string that holds a NUL:
`{"type": "nul_character", "loc": ("query", "q") | ("body", "products", 0, "name") | ...}`, which
`api.errors` renders in the path's envelope, naming each field.

A JSON body can carry a NUL only as the escape `\\u0000` (a raw 0x00 byte is invalid JSON), so the
body is parsed a second time only when those six bytes are in it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

NUL = "\x00"
#: The `type` of the validation error (as pydantic names its error types).
NUL_ERROR_TYPE = "nul_character"
NUL_MESSAGE = "must not contain a NUL character (U+0000)"
#: Most NUL errors reported for one request (the rest are the same mistake).
MAX_ERRORS = 20

_ESCAPED_NUL = b"\\u0000"


def _printable(name: str) -> str:
    """A name as it can be shown back to the client: a NUL in it spelt `\\u0000`."""
    return name.replace(NUL, "\\u0000")


def _header_name(raw: bytes) -> str:
    """`idempotency-key` -> `Idempotency-Key` (ASGI header names are lower case)."""
    return "-".join(part.capitalize() for part in raw.decode("latin-1").split("-"))


def _error(loc: tuple[Any, ...]) -> dict[str, Any]:
    return {"type": NUL_ERROR_TYPE, "loc": loc, "msg": NUL_MESSAGE, "input": None}


def nul_locations(value: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The location (object keys and list indexes, depth first) of every string of a parsed JSON
    document that holds a NUL; a key holding one is located at itself."""
    found: list[tuple[Any, ...]] = []
    pending: list[tuple[tuple[Any, ...], Any]] = [(loc, value)]
    while pending and len(found) < MAX_ERRORS:
        where, item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                found.append(where)
        elif isinstance(item, dict):
            for key, sub in reversed(item.items()):
                if NUL in key:
                    found.append((*where, _printable(key)))
                else:
                    pending.append(((*where, key), sub))
        elif isinstance(item, list):
            pending.extend(((*where, index), sub) for index, sub in reversed(list(enumerate(item))))
    return found


def _body_is_json(request: Request) -> bool:
    """True when FastAPI reads this request's body as JSON: no `Content-Type`, or a JSON one."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    subtype = content_type.split(";", 1)[0].strip().lower().rpartition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


async def reject_nul_characters(request: Request) -> None:
    """Raise `RequestValidationError` (a 400 naming each field) when a path parameter, a query
    parameter (name or value), a header value or a string of the JSON body holds a NUL character."""
    errors = [_error(("path", name)) for name, v in request.path_params.items() if NUL in str(v)]
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            errors.append(_error(("query", _printable(name))))
    for raw_name, raw_value in request.headers.raw:
        if b"\x00" in raw_value or b"\x00" in raw_name:
            errors.append(_error(("header", _printable(_header_name(raw_name)))))
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is not None and _body_is_json(request):
        body = await request.body()  # already read (and kept) by FastAPI for a route with a body
        if _ESCAPED_NUL in body:
            try:
                document = json.loads(body)
            except ValueError:  # FastAPI answers a body that is not JSON itself
                document = None
            errors.extend(_error(("body", *loc)) for loc in nul_locations(document))
    if errors:
        raise RequestValidationError(errors[:MAX_ERRORS])
