"""The store API benchmark's pure parts: figures, header and body parsing, the rate-limit plan, the
stock checks, option validation and the report (no network)."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest
from multidict import CIMultiDict
from rich.console import Console

from bench.cli import (
    UsageError,
    build_parser,
    build_store_parser,
    main,
    new_store_results,
    parameters,
    validate,
    validate_store,
)
from bench.client import Reply
from bench.report import render_store
from bench.store import (
    ListingSample,
    OrderSample,
    RateBudget,
    StoreProduct,
    classify_order_reply,
    error_code,
    expected_total,
    first_int,
    listing_figures,
    listing_quantities,
    location_path,
    money,
    order_figures,
    order_lines,
    planned_requests,
    rate_budget,
    rate_limit_problem,
    split_evenly,
    store_invariants,
    summarize_ms,
)

pytestmark = pytest.mark.pure


def reply(status: int, payload: Any = None, headers: dict[str, str] | None = None) -> Reply:
    body = b"" if payload is None else json.dumps(payload).encode()
    return Reply(status, CIMultiDict(headers or {}), body, payload, payload is not None)


# --- figures ------------------------------------------------------------------------------------


def test_summary_is_in_milliseconds_with_p90() -> None:
    summary = summarize_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["count"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100.0
    assert summary["mean_ms"] == pytest.approx(50.5)


def test_summary_of_nothing() -> None:
    summary = summarize_ms([])
    assert summary["count"] == 0
    assert all(v is None for k, v in summary.items() if k != "count")


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [(10, 3, [4, 3, 3]), (2, 4, [1, 1, 0, 0]), (0, 2, [0, 0]), (7, 1, [7])],
)
def test_split_evenly(total: int, parts: int, expected: list[int]) -> None:
    assert split_evenly(total, parts) == expected
    assert sum(split_evenly(total, parts)) == total


def test_split_evenly_rejects_no_parts() -> None:
    with pytest.raises(ValueError):
        split_evenly(3, 0)


def test_listing_figures_count_unexpected_cache_and_stale_reads() -> None:
    samples = [
        ListingSample(0.002, 200, "MISS"),
        ListingSample(0.004, 200, "MISS"),
        ListingSample(0.001, 200, "HIT", stale=True),  # a stale entry survived the write
        ListingSample(0.003, 200, None),  # no X-Cache header
        ListingSample(0.050, 429, None),  # not in the latency
        ListingSample(None, error="ClientConnectionError"),
    ]
    figures = listing_figures(samples, "MISS", 0.5, [0.001, 0.003])
    assert figures["requests"] == 6
    assert figures["latency"]["count"] == 4
    assert figures["latency"]["max_ms"] == 4.0
    assert figures["x_cache"] == {"HIT": 1, "MISS": 2, "absent": 1}
    assert figures["unexpected_cache"] == 2
    assert figures["stale_reads"] == 1
    assert figures["http"] == {"200": 4, "429": 1}
    assert figures["errors"] == {"ClientConnectionError": 1}
    assert figures["reads_per_s"] == 8.0
    assert figures["write_latency"]["count"] == 2


def test_hit_figures_have_no_write_latency() -> None:
    figures = listing_figures([ListingSample(0.001, 200, "HIT")], "HIT", 1.0)
    assert figures["unexpected_cache"] == 0
    assert "write_latency" not in figures


# --- headers and bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", 100),
        (" 42 ", 42),
        ("100, 100;w=3600", 100),
        ("100;w=3600", 100),
        ("", None),
        ("x", None),
        (None, None),
    ],
)
def test_first_int(value: str | None, expected: int | None) -> None:
    assert first_int(value) == expected


def test_rate_budget_from_headers() -> None:
    headers = CIMultiDict({"ratelimit-limit": "100", "RateLimit-Remaining": "97", "RateLimit-Reset": "3512"})
    assert rate_budget(headers) == RateBudget(100, 97, 3512)
    assert rate_budget(CIMultiDict({"X-Cache": "HIT"})) is None


def test_planned_requests_per_manager() -> None:
    # manager 0: setup 1; listing C=1 with 10 reads: (1 + 10) hit + (1 + 2 x 10) miss = 32;
    # listing C=2: 5 reads each: 6 + 11 = 17; orders: half of 10 plus 2 listings = 7
    assert planned_requests(2, 50, 10, [1, 2], 10, 2) == [1 + 32 + 17 + 7, 1 + 17 + 7]
    # 250 products are 3 setup batches; no listing phase, no orders
    assert planned_requests(1, 250, 0, [1], 0, 1) == [3]
    assert planned_requests(1, 50, 0, [1], 4, 1) == [1 + 4 + 2]


def test_rate_limit_problem_says_how_to_raise_it() -> None:
    problem = rate_limit_problem("mgr_1", RateBudget(100, 99, 3600), 500)
    assert problem is not None
    assert "STORE_RATE_LIMIT=1000000/hour" in problem
    assert "mgr_1" in problem
    assert rate_limit_problem("mgr_1", RateBudget(10**6, 10**6 - 1, 3600), 500) is None
    assert rate_limit_problem("mgr_1", None, 500) is None  # no headers: not checked (noted)
    # only a limit: compared with the limit
    assert rate_limit_problem("mgr_1", RateBudget(100, None, None), 500) is not None


def test_rate_limit_keeps_a_margin() -> None:
    assert rate_limit_problem("m", RateBudget(200, 100, None), 90) is not None  # 90 x 1.05 + 10 > 100
    assert rate_limit_problem("m", RateBudget(200, 200, None), 90) is None


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/api/orders/ord_789", "api/orders/ord_789"),
        ("http://127.0.0.1:8000/api/orders/ord_7?x=1", "api/orders/ord_7?x=1"),
        ("api/orders/ord_7", "api/orders/ord_7"),
        ("", None),
        (None, None),
        ("/", None),
    ],
)
def test_location_path(location: str | None, expected: str | None) -> None:
    assert location_path(location) == expected


def test_error_code_of_both_envelopes() -> None:
    assert error_code({"error": {"code": "INSUFFICIENT_STOCK", "message": "m", "details": {}}}) == (
        "INSUFFICIENT_STOCK"
    )
    assert error_code({"error": "Product not found", "code": "PRODUCT_NOT_FOUND"}) == "PRODUCT_NOT_FOUND"
    assert error_code({"detail": "x"}) is None
    assert error_code(None) is None


def test_listing_quantities() -> None:
    body = {
        "products": [{"id": "prod_001", "name": "a", "price": 1.5, "quantity": 3}, {"id": 2, "quantity": 0}]
    }
    assert listing_quantities(body) == {"prod_001": 3, "2": 0}
    assert listing_quantities({"products": []}) == {}
    assert listing_quantities({"products": [{"id": "prod_001", "quantity": "3"}]}) is None
    assert listing_quantities({"products": [{"id": "prod_001", "quantity": True}]}) is None
    assert listing_quantities([{"id": "prod_001"}]) is None


def test_money() -> None:
    assert money(44.97) == 44.97
    assert money("44.97") == 44.97
    assert money(3) == 3.0
    assert money(True) is None
    assert money("x") is None


# --- orders -------------------------------------------------------------------------------------

P1 = StoreProduct("prod_001", "a", 14.99)
P2 = StoreProduct("prod_002", "b", 7.5)
P3 = StoreProduct("prod_003", "c", 1.99)


def test_order_lines_are_distinct_products_within_bounds() -> None:
    rng = random.Random(7)
    seen_sizes = set()
    for _ in range(200):
        lines = order_lines(rng, [P1, P2, P3], 2, 3)
        seen_sizes.add(len(lines))
        assert 1 <= len(lines) <= 2
        assert len({p.id for p, _ in lines}) == len(lines)
        assert all(1 <= q <= 3 for _, q in lines)
    assert seen_sizes == {1, 2}
    assert len(order_lines(rng, [P1], 5, 1)) == 1  # never more lines than products


def test_expected_total_is_to_the_cent() -> None:
    assert expected_total([(P1, 3)]) == 44.97
    assert expected_total([(P1, 1), (P2, 2), (P3, 3)]) == 35.96


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            reply(200, {"order_id": "ord_789", "status": "processed", "total_amount": 44.97}),
            ("processed", "ord_789", 44.97),
        ),
        (reply(202, {"order_id": "ord_7", "status": "pending"}), (None, "ord_7", None)),
        (reply(200, {"order_id": "ord_7", "status": "pending"}), (None, "ord_7", None)),
        (reply(400, {"error": {"code": "INSUFFICIENT_STOCK"}}), ("rejected:INSUFFICIENT_STOCK", None, None)),
        (reply(404, {"error": {"code": "PRODUCT_NOT_FOUND"}}), ("rejected:PRODUCT_NOT_FOUND", None, None)),
        (reply(400, {"detail": "?"}), ("rejected:http_400", None, None)),
        (
            reply(429, {"error": {"code": "RATE_LIMIT_EXCEEDED"}}),
            ("rejected:RATE_LIMIT_EXCEEDED", None, None),
        ),
        (reply(500, {"error": {"code": "INTERNAL_ERROR"}}), ("error:http_500", None, None)),
        (reply(200, {"order_id": "ord_1"}), ("error:bad_body", "ord_1", None)),
        (reply(200, {"order_id": "ord_1", "status": "failed"}), ("rejected:failed", "ord_1", None)),
    ],
)
def test_classify_order_reply(answer: Reply, expected: tuple) -> None:
    assert classify_order_reply(answer) == expected


def sample(lines: list[tuple[StoreProduct, int]], **kw: Any) -> OrderSample:
    return OrderSample(manager_id="mgr_1", lines=lines, customer=1, **kw)


def test_order_body_follows_the_contract() -> None:
    body = sample([(P1, 2), (P2, 1)]).body
    assert body == {
        "manager_id": "mgr_1",
        "customer": {"id": "cust_1", "email": "bench1@example.com"},
        "products": [{"product_id": "prod_001", "quantity": 2}, {"product_id": "prod_002", "quantity": 1}],
    }


def test_order_figures() -> None:
    samples = [
        sample(
            [(P1, 1)], sent_at=0.0, http_status=200, final_at=0.1, outcome="processed", total_amount=14.99
        ),
        sample(
            [(P1, 1), (P2, 2)],
            sent_at=0.5,
            http_status=202,
            final_at=1.5,
            outcome="processed",
            polls=3,
            total_amount=29.99,
        ),
        sample([(P3, 1)], sent_at=1.0, http_status=400, final_at=1.05, outcome="rejected:INSUFFICIENT_STOCK"),
        sample([(P3, 1)], sent_at=1.0, outcome="error:ClientConnectionError"),
        sample([(P2, 1)], sent_at=1.0, http_status=202, outcome="pending"),
    ]
    figures = order_figures(samples, concurrency=4, started=0.0, ended=2.0)
    assert figures["processed"] == 2
    assert figures["processed_per_s"] == 1.0
    assert figures["latency"]["count"] == 2
    assert figures["latency"]["max_ms"] == 1000.0  # the 202's polls count
    assert figures["latency_known_outcomes"]["count"] == 3
    assert figures["http"] == {"200": 1, "202": 2, "400": 1, "no_answer": 1}
    assert figures["outcomes"] == {
        "error:ClientConnectionError": 1,
        "pending": 1,
        "processed": 2,
        "rejected:INSUFFICIENT_STOCK": 1,
    }
    assert figures["followed_202"] == 2
    assert figures["polls"] == 3
    assert figures["lines"] == {"1": 4, "2": 1}
    assert figures["units"] == 7
    assert figures["total_amount_mismatches"] == 0


def test_order_figures_count_a_wrong_total() -> None:
    samples = [
        sample([(P1, 3)], sent_at=0, http_status=200, final_at=0.1, outcome="processed", total_amount=44.96)
    ]
    assert order_figures(samples, 1, 0.0, 1.0)["total_amount_mismatches"] == 1


def test_known_outcomes() -> None:
    assert sample([], outcome="processed").known
    assert sample([], outcome="rejected:INSUFFICIENT_STOCK").known
    assert not sample([], outcome="pending").known
    assert not sample([], outcome="error:http_500").known
    assert not sample([]).known


# --- stock checks -------------------------------------------------------------------------------


def by_name(checks: list) -> dict[str, Any]:
    return {c.name: c for c in checks}


def test_consistent_stock_passes() -> None:
    checks = by_name(store_invariants({"a": 10, "b": 5}, {"a": 7, "b": 5}, {"a": 3}, {}))
    assert all(c.passed for c in checks.values())
    assert "processed quantities 3 == stock decrease 3" in checks["total_decrease_matches"].detail


def test_lost_update_fails_the_accounting() -> None:
    checks = by_name(store_invariants({"a": 10, "b": 5}, {"a": 8, "b": 5}, {"a": 3}, {}))
    assert not checks["stock_accounting"].passed
    assert checks["stock_accounting"].failures == [{"product_id": "a", "expected": 7, "actual": 8}]
    assert not checks["total_decrease_matches"].passed
    assert checks["stock_non_negative"].passed


def test_negative_stock_fails() -> None:
    checks = by_name(store_invariants({"a": 1}, {"a": -1}, {"a": 2}, {}))
    assert not checks["stock_non_negative"].passed
    assert checks["stock_accounting"].passed  # 1 - 2 == -1: accounted, but oversold


def test_unknown_outcomes_skip_their_products_and_fail() -> None:
    checks = by_name(store_invariants({"a": 10, "b": 5}, {"a": 6, "b": 4}, {"a": 4}, {"b": 1}))
    assert not checks["all_outcomes_known"].passed
    assert checks["stock_accounting"].passed
    assert "1 skipped" in checks["stock_accounting"].detail


def test_a_product_missing_from_the_final_listing_fails() -> None:
    checks = by_name(store_invariants({"a": 10, "b": 5}, {"a": 10}, {}, {}))
    assert not checks["products_listed"].passed
    assert checks["stock_accounting"].passed


# --- options ------------------------------------------------------------------------------------


def parse_store(*argv: str):  # type: ignore[no-untyped-def]
    return build_store_parser().parse_args(list(argv))


def test_store_defaults_validate() -> None:
    args = parse_store()
    target, listing = validate_store(args)
    assert target.url == "http://127.0.0.1:8000"
    assert listing == [1]
    assert (args.products, args.gets, args.orders, args.concurrency, args.managers) == (50, 200, 1000, 32, 1)
    assert str(args.out) == "bench/results/store-latest.json"


def test_store_listing_concurrency_and_auth() -> None:
    target, listing = validate_store(parse_store("--listing-concurrency", "1,32", "--basic", "mgr:pw"))
    assert listing == [1, 32]
    assert target.basic == ("mgr", "pw")
    target, _ = validate_store(parse_store("--login", "ops:pw"))
    assert (target.basic, target.login) == (("ops", "pw"), True)
    target, _ = validate_store(parse_store("--token", "t"))
    assert target.token == "t"


@pytest.mark.parametrize(
    "argv",
    [
        ("--listing-concurrency", "1,x"),
        ("--listing-concurrency", "0"),
        ("--listing-concurrency", "2,2"),
        ("--listing-concurrency", "64", "--gets", "10"),
        ("--products", "0"),
        ("--orders", "-1"),
        ("--orders", "5", "--managers", "6"),
        ("--lines", "0"),
        ("--max-quantity", "0"),
        ("--stock", "0"),
        ("--timeout", "0"),
        ("--settle-timeout", "nan"),
        ("--token", "t", "--basic", "a:b"),
        ("--basic", "nocolon"),
        ("--url", "http://example.com"),
        ("--url", "ftp://127.0.0.1"),
    ],
)
def test_store_bad_options(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        validate_store(parse_store(*argv))


def test_store_options_that_skip_phases() -> None:
    validate_store(parse_store("--orders", "0", "--stock", "0"))  # listing only
    validate_store(parse_store("--gets", "0", "--listing-concurrency", "8"))  # orders only


def test_store_status_filter_is_checked_by_the_parser() -> None:
    assert parse_store("--status", "in_stock").status == "in_stock"
    with pytest.raises(SystemExit):
        parse_store("--status", "sold")


def test_store_subcommand_is_dispatched_and_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "--orders", "-1"]) == 2
    assert "--orders must be within" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["store", "--skip-open"])  # an option of the core benchmark only


def test_the_core_benchmark_options_are_unchanged() -> None:
    target, workers = validate(build_parser().parse_args(["--login", "a:b", "--workers", "1,2"]))
    assert (target.basic, target.login, workers) == (("a", "b"), True, [1, 2])
    with pytest.raises(UsageError):
        validate(build_parser().parse_args(["--token", "t", "--login", "a:b"]))


def test_store_results_redact_credentials() -> None:
    results = new_store_results(parse_store("--basic", "mgr:secret"))
    assert results["benchmark"] == "store"
    assert results["parameters"]["basic"] == "***"
    assert "secret" not in json.dumps(results)
    assert parameters(parse_store())["out"] == "bench/results/store-latest.json"


# --- report -------------------------------------------------------------------------------------


def test_render_store_prints_every_figure() -> None:
    listing = {
        "concurrency": 1,
        "status": None,
        "miss": listing_figures(
            [ListingSample(0.004, 200, "MISS"), ListingSample(0.002, 200, "HIT")], "MISS", 1.0, [0.001]
        ),
        "hit": listing_figures([ListingSample(0.001, 200, "HIT")], "HIT", 1.0),
    }
    orders = order_figures(
        [sample([(P1, 1)], sent_at=0, http_status=202, final_at=0.2, outcome="processed", total_amount=1.0)],
        32,
        0.0,
        1.0,
    )
    results = {
        "setup": {
            "managers": 1,
            "products_per_manager": 50,
            "stock_per_product": 10**6,
            "rate_limit": {"checked": True, "remaining_min": 999_999, "planned_max": 1_300},
        },
        "listing": [listing],
        "orders": orders,
        "invariants": {
            "passed": False,
            "checks": [
                {"name": "stock_accounting", "passed": True, "detail": "ok"},
                {"name": "stock_non_negative", "passed": False, "detail": "1 failure(s)"},
            ],
        },
        "notes": ["a note"],
    }
    out = io.StringIO()
    render_store(Console(file=out, width=200, color_system=None), results)
    text = out.getvalue()
    for expected in (
        "listing C=1",
        "cache miss: p50 / p90 / p99 / mean",
        "3.00 / 3.80 / 3.98 / 3.00 ms",
        "X-Cache not MISS",
        "1 (HIT: 1, MISS: 1)",
        "processed orders/s",
        "200.0 / 200.0 / 200.0 / 200.0 ms",
        "202: 1",
        "total_amount mismatches",
        "FAIL (1 failure(s))",
        "999,999 / 1,300",
        "note: a note",
    ):
        assert expected in text, expected
