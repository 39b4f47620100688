"""The unit of work's after-commit effects (STYLE.md, rules 1, 2 and 2b).

Core services never commit and never talk to the broker or Redis. What must follow a commit they
register on the session instead:

* `dispatch`: order ids to send to the workers (the orders table is the outbox: an id that is never
  sent stays `pending` and the beat sweep sends it);
* `events`: order outcomes to publish to the waiting requests (`core.events`);
* `listings`: store managers whose cached listings a write changed (`core.products.cache`);
* `credentials`: users whose password, role or binding changed: the API process that made the change
  drops them from its authentication caches at once (other processes within `AUTH_USER_CACHE_SECONDS`,
  CONTRACT.md "Users and authentication").

The edge that owns the transaction (the API's request dependency, `core.db.session_scope` for tasks
and the CLI) commits once and then takes the effects and runs them: the API with its async clients and
short timeouts (`api.effects`), the synchronous edges with `run_sync`. A rollback discards them, so
nothing is announced for a write that did not happen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.orm import Session

from core.events import OrderOutcome

log = logging.getLogger(__name__)

_KEY = "orderflow.effects"


@dataclass
class Effects:
    """What a committed transaction must still do; empty is falsy."""

    dispatch: list[int] = field(default_factory=list)
    events: list[OrderOutcome] = field(default_factory=list)
    listings: set[str] = field(default_factory=set)
    credentials: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.dispatch or self.events or self.listings or self.credentials)


def effects_of(session: Session) -> Effects:
    """The effects registered so far in `session`'s transaction (created on first use)."""
    found = session.info.get(_KEY)
    if found is None:
        found = session.info[_KEY] = Effects()
    return found


def take_effects(session: Session) -> Effects:
    """Remove and return the effects of the transaction that just committed."""
    return session.info.pop(_KEY, None) or Effects()


@event.listens_for(Session, "after_rollback")
def _discard_rolled_back(session: Session) -> None:
    session.info.pop(_KEY, None)


def run_sync(effects: Effects) -> None:
    """Run `effects` after a commit, synchronously (workers, the CLI). Never raises: every effect is
    best-effort, bounded by the waiters' re-reads (events) and the listing TTL (listings). Order ids
    to dispatch are left to the outbox sweep: only the API dispatches (`api.dispatch`). Listings and
    events go to the process's back-end, Redis or memory (`core.backends`)."""
    from core.backends import sync_effects  # imported here: it imports this module

    if effects.listings:
        sync_effects().invalidate_listings(sorted(effects.listings))
    if effects.events:
        sync_effects().publish_events(effects.events)
    if effects.dispatch:
        log.info("orders %s left to the outbox sweep", effects.dispatch[:10])
