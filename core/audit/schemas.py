"""Audit log shapes: the filter of `GET /audit-log` and a row as the API shows it (docs/audit.md)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

TIMESTAMP_RULE = (
    "Timestamps must be ISO-8601 with a timezone, e.g. 2026-11-21T10:00:00Z or 2026-11-21T12:00:00+02:00."
)
#: RFC 3339 `date-time` (section 5.6), the OpenAPI `format` of `since` and `until`.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def check_rfc3339(value: object) -> object:
    """`value` unchanged unless it is a string that is not an RFC 3339 date-time with a timezone
    (`Z` or `+hh:mm`); ValueError with a sentence otherwise. (Pydantic alone would also read `0.5`
    as a Unix time and accept `2026-11-21 10:00Z`, which the OpenAPI `date-time` format excludes.)"""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError(TIMESTAMP_RULE)
    return value


def check_aware(value: datetime | None) -> datetime | None:
    """`value` in UTC if it carries a timezone (or None); ValueError with a sentence otherwise.
    A naive time is ambiguous (whose local time?), so it is refused rather than guessed. The
    conversion matters on SQLite, which stores and compares the UTC wall time as text."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError(TIMESTAMP_RULE)
    return value.astimezone(UTC)


#: An ISO-8601 datetime with a timezone (`Z` or `+hh:mm`), converted to UTC; a naive one is a
#: validation error.
AwareTimestamp = Annotated[datetime, BeforeValidator(check_rfc3339), AfterValidator(check_aware)]


class AuditFilter(BaseModel):
    """What `GET /audit-log` narrows by; every field optional, all given ones must match.

    `since` is inclusive and `until` exclusive (`since <= at < until`), both timezone-aware."""

    model_config = ConfigDict(frozen=True)

    actor: str | None = Field(default=None, max_length=100)
    action: str | None = Field(default=None, max_length=64)
    entity: str | None = Field(default=None, max_length=32)
    entity_id: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=128)
    since: AwareTimestamp | None = None
    until: AwareTimestamp | None = None


class AuditEntryRead(BaseModel):
    """One audit row: `at` in UTC; `entity_id` is the id as text; `request_id` is the request's
    `X-Request-ID` (null when no request was behind it); `details` a small object or null."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    request_id: str | None
    details: dict[str, Any] | None
