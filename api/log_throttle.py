"""One rule for the API's Redis fault warnings: each component logs at most one every
`EVERY_SECONDS` (30), so that a Redis outage under load costs a line per half minute, not one per
request. Used by the after-commit effects (`api.effects`), the listing cache (`api.listing_cache`)
and the store rate limit (`api.ratelimit`, which fails open)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

#: The fewest seconds between two warnings of one `LogThrottle`.
EVERY_SECONDS = 30.0


class LogThrottle:
    """Lets a warning through at most once every `every` seconds (monotonic clock); the first one
    always."""

    def __init__(self, log: logging.Logger, every: float = EVERY_SECONDS) -> None:
        self._log = log
        self._every = every
        self._last = -math.inf

    def due(self) -> bool:
        """True (and the quiet period starts again) when a warning may be logged now; for a caller
        that builds its message only then."""
        now = time.monotonic()
        if now - self._last < self._every:
            return False
        self._last = now
        return True

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """`log.warning(msg, *args, **kwargs)` when `due()`."""
        if self.due():
            self._log.warning(msg, *args, **kwargs)
