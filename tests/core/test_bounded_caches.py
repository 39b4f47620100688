"""The per-process caches stay bounded and drop what has expired (docs/operations.md, "Limits"):
the credential and account caches of authentication (`core.users.security`) and the embedded
default's store listings (`core.products.cache.MemoryListings`)."""

from __future__ import annotations

import pytest

from core import redisconn
from core.products.cache import MemoryListings, invalidate
from core.users.models import Role
from core.users.security import Account, AccountCache, AccountRead, CredentialCache, PasswordChecker

pytestmark = pytest.mark.pure


def test_the_credential_cache_forgets_the_least_recently_used_user_beyond_its_bound():
    cache = CredentialCache(ttl=60, max_entries=2)
    for user_id in (1, 2):
        cache.remember(user_id, "hash", "secret")
    assert cache.verified(1, "hash", "secret")  # user 1 is now the most recently used
    cache.remember(3, "hash", "secret")
    assert len(cache) == 2
    assert not cache.verified(2, "hash", "secret")
    assert cache.verified(1, "hash", "secret") and cache.verified(3, "hash", "secret")
    assert not cache.verified(1, "hash", "another password")


def _read(user_id: int, read_at: float) -> AccountRead:
    return AccountRead(Account(user_id, f"user{user_id}", Role.CUSTOMER, 0.0), read_at)


def test_the_account_cache_keeps_the_newer_read_and_stays_bounded():
    cache = AccountCache(ttl=60, max_entries=2)
    cache.remember(1, _read(1, 100.0))
    cache.remember(1, _read(1, 90.0))  # an older read finishing later changes nothing
    assert cache.fresh(1, issued_at=95.0) == _read(1, 100.0)
    assert cache.fresh(1, issued_at=101.0) is None  # a token newer than the read reads again
    cache.remember(2, _read(2, 100.0))
    cache.remember(3, _read(3, 100.0))
    assert len(cache) == 2
    assert cache.fresh(1, issued_at=0.0) is None
    cache.forget(3)
    assert len(cache) == 1


def test_an_account_cache_with_no_ttl_remembers_nothing():
    cache = AccountCache(ttl=0)
    cache.remember(1, _read(1, 100.0))
    assert len(cache) == 0 and cache.fresh(1, issued_at=0.0) is None


def test_a_malformed_stored_hash_is_a_wrong_password_not_an_error():
    checker = PasswordChecker(rounds=4)
    assert checker.check("secret", "not a bcrypt hash") is False


def test_memory_listings_drop_expired_entries_once_past_their_bound():
    listings = MemoryListings()
    for index in range(10_001):
        listings.put(f"old{index}", b"[]", ttl=-1)  # expired at once
    listings.put("fresh", b"[1]", ttl=60)
    assert listings.get("fresh") == b"[1]"
    assert listings.get("old1") is None
    assert len(listings._entries) == 1
    version = listings.version("mgr_1")
    listings.invalidate(["mgr_1"])
    assert listings.version("mgr_1") != version
    listings.clear()
    assert listings.get("fresh") is None


def test_invalidating_no_manager_sends_nothing(monkeypatch):
    monkeypatch.setattr(redisconn, "client", lambda: pytest.fail("Redis was called"))
    invalidate([])
