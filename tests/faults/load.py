"""A steady stream of orders from a few well-behaved clients, run on an event loop of its own thread
so that the test can inject faults with blocking calls meanwhile.

Clients (each a customer of its own, with a Bearer token):

* `keyed`: sends an `Idempotency-Key` with every order and retries the same request on a timeout, a
  transport error or a 5xx, with capped exponential backoff, for up to `RETRY_FOR_SECONDS`; it
  cancels every `CANCEL_EVERY`-th order it was told about at once (racing the reservation), again
  retrying the cancel on a timeout or a 5xx (a cancel is safe to repeat).
* `plain`: no key, so it never retries a request that may have reached the server (a timeout or a
  5xx); it retries only a connection that could not be opened.
* `waiting`: no key, `Prefer: wait=2`; a 201 tells it the outcome, which must never change later.

Everything is counted in a `Tally`: the orders the clients meant to place, every HTTP answer by
status (timeouts and transport errors by name), and each order the API told about (202/201) with
the lines that were sent.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

#: How long a keyed client keeps retrying one order (longer than the longest outage, 45 s).
RETRY_FOR_SECONDS = 75.0
REQUEST_TIMEOUT_SECONDS = 5.0
CANCEL_EVERY = 6
#: Pause between two orders of one client (uniform, seconds): ~2 orders/s per client.
PAUSE = (0.25, 0.75)
Lines = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Customer:
    name: str
    user_id: int
    token: str


@dataclass
class Tally:
    """What the clients saw during one phase."""

    meant: int = 0  # orders the clients set out to place
    answers: Counter = field(default_factory=Counter)  # every order request's outcome
    cancel_answers: Counter = field(default_factory=Counter)
    accepted: dict[int, Lines] = field(default_factory=dict)  # told about (202/201): id -> lines
    settled: dict[int, str] = field(default_factory=dict)  # a 201's status, by order id
    keys: dict[tuple[int, str], int] = field(default_factory=dict)  # (user, key) -> order id
    key_mismatches: list[tuple[str, int, int]] = field(default_factory=list)  # same key, other id
    cancelled: set[int] = field(default_factory=set)
    gave_up: int = 0  # keyed orders abandoned after RETRY_FOR_SECONDS
    replayed: int = 0  # keyed retries answered with the first order (Idempotent-Replayed)

    def errors(self) -> dict[str, int]:
        """Non-2xx answers and failed requests, by status code or error name."""
        merged = Counter({k: v for k, v in self.answers.items() if not k.startswith("2")})
        merged.update({f"cancel {k}": v for k, v in self.cancel_answers.items() if not k.startswith("2")})
        return dict(sorted(merged.items()))


def _outcome(response: httpx.Response) -> str:
    if response.status_code == 400:
        try:
            code = response.json().get("code", "")
        except ValueError:
            code = ""
        return f"400 {code.lower()}" if code else "400"
    return str(response.status_code)


def _retryable(outcome: str) -> bool:
    return outcome.startswith("5") or not outcome[0].isdigit()


class Load:
    """`start()` the clients, inject faults, `stop()` them (waits for their last requests)."""

    def __init__(self, base_url: str, customers: dict[str, Customer], product_ids: list[int], seed: int):
        self.base_url = base_url
        self.customers = customers
        self.product_ids = product_ids
        self.rng = random.Random(seed)
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- control, from the test's thread ------------------------------------------------------------

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="faults-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, within: float = RETRY_FOR_SECONDS + 30) -> Tally:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(within)
        if self._thread.is_alive():
            raise AssertionError(f"the load's clients did not finish within {within:g} s of the stop")
        if self._error is not None:
            raise AssertionError(f"a load client crashed: {self._error!r}") from self._error
        return self.tally

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._error = exc

    async def _main(self) -> None:
        # Idle connections expire before uvicorn's keep-alive timeout (5 s): with both at 5 s, a
        # connection could be reused by the client just as the server closes it, a reset (`ReadError`)
        # that no fault causes.
        limits = httpx.Limits(max_connections=20, keepalive_expiry=2.0)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=REQUEST_TIMEOUT_SECONDS, trust_env=False, limits=limits
        ) as http:
            await asyncio.gather(*(self._client(http, kind, c) for kind, c in self.customers.items()))

    # -- the clients --------------------------------------------------------------------------------

    def _lines(self) -> Lines:
        plenty, *others = self.product_ids
        lines = {plenty: self.rng.randint(1, 3)}
        if others and self.rng.random() < 0.5:
            lines[self.rng.choice(others)] = self.rng.randint(1, 2)
        if self.rng.random() < 0.3:  # now and then an order of the scarce products alone
            lines = {self.rng.choice(others or [plenty]): 1}
        return tuple(sorted(lines.items()))

    async def _client(self, http: httpx.AsyncClient, kind: str, customer: Customer) -> None:
        headers = {"Authorization": f"Bearer {customer.token}"}
        told = 0
        while not self._stop.is_set():
            lines = self._lines()
            self.tally.meant += 1
            body = {"products": [{"product_id": p, "quantity": q} for p, q in lines]}
            if kind.startswith("keyed"):
                order_id = await self._keyed(http, customer, headers, body, lines)
                if order_id is not None:
                    told += 1
                    if told % CANCEL_EVERY == 0:
                        await self._cancel(http, headers, order_id)
            elif kind.startswith("waiting"):
                await self._once(http, {**headers, "Prefer": "wait=2"}, body, lines, retry_connect=True)
            else:
                await self._once(http, headers, body, lines, retry_connect=True)
            await asyncio.sleep(self.rng.uniform(*PAUSE))

    async def _post(
        self, http: httpx.AsyncClient, headers: dict, body: dict
    ) -> tuple[str, httpx.Response | None]:
        try:
            response = await http.post("/orders", json=body, headers=headers)
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.ConnectError:
            return "connect error", None
        except httpx.TransportError as exc:
            return type(exc).__name__, None
        return _outcome(response), response

    def _told(self, response: httpx.Response, lines: Lines) -> int | None:
        if response.status_code not in (201, 202):
            return None
        order = response.json()
        self.tally.accepted[order["id"]] = lines
        if response.status_code == 201:
            self.tally.settled[order["id"]] = order["status"]
        return int(order["id"])

    async def _once(
        self, http: httpx.AsyncClient, headers: dict, body: dict, lines: Lines, retry_connect: bool
    ) -> None:
        for _ in range(3):
            outcome, response = await self._post(http, headers, body)
            self.tally.answers[outcome] += 1
            if response is not None:
                self._told(response, lines)
            if not (retry_connect and outcome == "connect error"):
                return
            await asyncio.sleep(0.5)

    async def _keyed(
        self, http: httpx.AsyncClient, customer: Customer, headers: dict, body: dict, lines: Lines
    ) -> int | None:
        key = uuid.uuid4().hex
        headers = {**headers, "Idempotency-Key": key}
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            outcome, response = await self._post(http, headers, body)
            self.tally.answers[outcome] += 1
            if response is not None and (order_id := self._told(response, lines)) is not None:
                first = self.tally.keys.setdefault((customer.user_id, key), order_id)
                if first != order_id:
                    self.tally.key_mismatches.append((key, first, order_id))
                if attempt > 1 and response.headers.get("Idempotent-Replayed") == "true":
                    self.tally.replayed += 1
                return order_id
            if not _retryable(outcome):
                return None
            if time.monotonic() + delay > deadline:
                self.tally.gave_up += 1
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def _cancel(self, http: httpx.AsyncClient, headers: dict, order_id: int) -> None:
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        delay = 0.2
        while True:
            try:
                response = await http.post(f"/orders/{order_id}/cancel", headers=headers)
                outcome = _outcome(response)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            self.tally.cancel_answers[outcome] += 1
            if outcome == "200":
                self.tally.cancelled.add(order_id)
                return
            if not _retryable(outcome) or time.monotonic() + delay > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)
