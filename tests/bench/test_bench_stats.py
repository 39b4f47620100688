"""The benchmark's pure parts: percentiles, rates, the open-model schedule, invariant checks."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest

from bench.cli import UsageError, _is_loopback, build_parser, parameters, validate
from bench.stats import (
    ProductState,
    arrival_schedule,
    best_final_time,
    check_invariants,
    confirmed_quantities,
    count_by,
    parse_timestamp,
    percentile,
    rate_per_second,
    summarize_latencies,
)

pytestmark = pytest.mark.pure

# --- percentiles -----------------------------------------------------------------------------


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 0) == 7.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)  # numpy.percentile(values, 95)


def test_percentile_does_not_need_sorted_input() -> None:
    assert percentile([9.0, 1.0, 5.0], 50) == 5.0


def test_percentile_of_1_to_100() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_summary_is_in_milliseconds() -> None:
    summary = summarize_latencies([0.001, 0.002, 0.003])
    assert summary.count == 3
    assert summary.p50_ms == pytest.approx(2.0)
    assert summary.max_ms == pytest.approx(3.0)
    assert summary.mean_ms == pytest.approx(2.0)


def test_summary_of_nothing() -> None:
    summary = summarize_latencies([])
    assert summary.count == 0
    assert summary.p99_ms is None


def test_rate_per_second() -> None:
    assert rate_per_second(100, 4.0) == 25.0
    assert rate_per_second(1, 3.0) == 0.33
    assert rate_per_second(5, 0.0) is None
    assert rate_per_second(5, None) is None


def test_count_by() -> None:
    assert count_by(["b", "a", "b"]) == {"a": 1, "b": 2}


# --- open-model schedule ------------------------------------------------------------------------


def test_schedule_is_evenly_spaced_from_zero() -> None:
    schedule = arrival_schedule(rate=4, duration=1)
    assert schedule == [0.0, 0.25, 0.5, 0.75]


def test_schedule_count_is_rate_times_duration() -> None:
    assert len(arrival_schedule(rate=100, duration=10)) == 1000
    assert len(arrival_schedule(rate=0.5, duration=3)) == 2  # starts at 0 s and 2 s
    assert len(arrival_schedule(rate=3, duration=0.1)) == 1


def test_schedule_does_not_drift_with_float_error() -> None:
    schedule = arrival_schedule(rate=3, duration=1000)
    assert len(schedule) == 3000
    assert schedule[-1] == pytest.approx(2999 / 3)
    assert all(b > a for a, b in itertools.pairwise(schedule))
    assert schedule[-1] < 1000


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (-1, 1), (1, 0), (math.inf, 1)])
def test_schedule_rejects_bad_input(rate: float, duration: float) -> None:
    with pytest.raises(ValueError):
        arrival_schedule(rate, duration)


# --- timestamps ---------------------------------------------------------------------------------


def test_parse_timestamp_aware_and_naive() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert parse_timestamp("2026-01-02T03:04:05+00:00") == moment
    assert parse_timestamp("2026-01-02T03:04:05Z") == moment
    assert parse_timestamp("2026-01-02T03:04:05") == moment  # naive = UTC
    assert parse_timestamp("not a date") is None
    assert parse_timestamp(None) is None


def test_best_final_time_prefers_a_plausible_server_time() -> None:
    assert best_final_time(observed=110.0, server=104.0, earliest=100.0) == 104.0
    # implausible (clock or time-zone mismatch): the observation wins
    assert best_final_time(observed=110.0, server=3700.0, earliest=100.0) == 110.0
    assert best_final_time(observed=110.0, server=50.0, earliest=100.0) == 110.0
    assert best_final_time(observed=110.0, server=None, earliest=100.0) == 110.0
    # a server time a hair after the observation is clamped to it
    assert best_final_time(observed=110.0, server=110.2, earliest=100.0) == 110.0


# --- invariants ---------------------------------------------------------------------------------


def state(**overrides: object) -> ProductState:
    values: dict[str, object] = {
        "product_id": 1,
        "initial_stock": 100,
        "confirmed_quantity": 30,
        "current_stock": 70,
        "ledger_sum": 70,
        "ledger_order_sum": -30,
        "pending_orders": 0,
    }
    values.update(overrides)
    return ProductState(**values)  # type: ignore[arg-type]


def verdicts(states: list[ProductState]) -> dict[str, bool]:
    return {c.name: c.passed for c in check_invariants(states)}


def test_consistent_products_pass_every_check() -> None:
    results = check_invariants(
        [
            state(),
            state(product_id=2, confirmed_quantity=0, current_stock=100, ledger_sum=100, ledger_order_sum=0),
        ]
    )
    assert [c.name for c in results] == [
        "all_orders_final",
        "stock_accounting",
        "stock_non_negative",
        "ledger_matches_stock",
        "ledger_matches_orders",
    ]
    assert all(c.passed for c in results)


def test_lost_update_fails_accounting_only() -> None:
    # two reservations raced and one decrement was lost: stock is one too high, but the ledger
    # recorded both movements
    result = verdicts([state(current_stock=71, ledger_sum=70)])
    assert result["stock_accounting"] is False
    assert result["ledger_matches_stock"] is False
    assert result["stock_non_negative"] is True


def test_oversell_fails_non_negative() -> None:
    result = verdicts(
        [state(initial_stock=5, confirmed_quantity=6, current_stock=-1, ledger_sum=-1, ledger_order_sum=-6)]
    )
    assert result["stock_non_negative"] is False
    assert result["stock_accounting"] is True


def test_ledger_drift_is_reported_with_details() -> None:
    checks = {c.name: c for c in check_invariants([state(ledger_sum=69)])}
    ledger = checks["ledger_matches_stock"]
    assert not ledger.passed
    assert ledger.failures == [{"product_id": 1, "ledger_sum": 69, "stock": 70}]
    assert ledger.as_dict()["failure_count"] == 1


def test_order_movements_must_match_confirmed_orders() -> None:
    result = verdicts([state(ledger_order_sum=-29)])
    assert result["ledger_matches_orders"] is False


def test_missing_ledger_fails() -> None:
    result = verdicts([state(ledger_sum=None, ledger_order_sum=None)])
    assert result["ledger_matches_stock"] is False
    assert result["ledger_matches_orders"] is False


def test_pending_orders_fail_the_final_check_and_skip_the_moving_product() -> None:
    # the product's pending order may be reserved between the reads: no verdict on its ledger
    checks = {
        c.name: c for c in check_invariants([state(pending_orders=2, ledger_sum=69), state(product_id=2)])
    }
    assert checks["all_orders_final"].passed is False
    assert checks["ledger_matches_stock"].passed is True
    assert "1 skipped" in checks["ledger_matches_stock"].detail
    assert checks["stock_non_negative"].passed is True


def test_negative_stock_fails_even_with_pending_orders() -> None:
    result = verdicts([state(pending_orders=1, current_stock=-1)])
    assert result["stock_non_negative"] is False


def test_confirmed_quantities_count_only_stock_holding_orders() -> None:
    lines = [
        (1, 2, "confirmed"),
        (1, 1, "completed"),
        (1, 5, "rejected"),
        (2, 1, "cancelled"),
        (2, 3, "failed"),
        (3, 1, "pending"),
        (3, 4, "confirmed"),
    ]
    assert confirmed_quantities(lines) == {1: 3, 3: 4}


# --- options ------------------------------------------------------------------------------------


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def test_defaults_validate() -> None:
    target, workers = validate(parse())
    assert target.url == "http://127.0.0.1:8000"
    assert workers == []


def test_remote_url_needs_allow_remote() -> None:
    with pytest.raises(UsageError):
        validate(parse("--url", "http://example.com:8000"))
    target, _ = validate(parse("--url", "http://example.com:8000", "--allow-remote"))
    assert target.url == "http://example.com:8000"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert _is_loopback(host)


def test_worker_list_and_auth() -> None:
    target, workers = validate(parse("--workers", "1,2,4", "--basic", "ann:s3:cret"))
    assert workers == [1, 2, 4]
    assert target.basic == ("ann", "s3:cret")
    assert not target.login
    target, _ = validate(parse("--login", "ops:pw"))
    assert (target.basic, target.login, target.token) == (("ops", "pw"), True, None)


@pytest.mark.parametrize(
    "argv",
    [
        ("--workers", "1,x"),
        ("--workers", "0"),
        ("--workers", "2,2"),
        ("--workers", "1,2", "--no-spawn-workers"),
        ("--skip-closed",),
        ("--token", "t", "--basic", "a:b"),
        ("--basic", "nocolon"),
        ("--login", "nocolon"),
        ("--login", "a:b", "--token", "t"),
        ("--rate", "100000", "--duration", "3600"),
    ],
)
def test_bad_option_combinations(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        validate(parse(*argv))


def test_parameters_redact_credentials() -> None:
    values = parameters(parse("--token", "secret-token"))
    assert values["token"] == "***"
    assert values["basic"] is None
    assert "secret-token" not in str(values)
