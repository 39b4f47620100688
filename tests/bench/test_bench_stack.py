"""The whole-stack benchmark's pure parts (`python -m bench stack`): /proc parsing and CPU deltas, the
wrk script and its output, the figures, the stock checks, the anchors' Celery settings, option
validation and the report. Nothing here starts a process or opens a socket."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench import procstat
from bench.anchors import anchor_conf
from bench.cli import UsageError, build_stack_parser, main, validate_stack
from bench.report import render_stack
from bench.stack import (
    OpenSample,
    cli_module,
    closed_figures,
    confirmed_rate,
    frame_function,
    ms_summary,
    new_stack_results,
    open_figures,
    parse_counts,
    per_unit_ms,
    poisson_schedule,
    profile_text,
    ratios,
    stock_checks,
    summarize_collapsed,
)
from bench.wrk import WrkOutputError, WrkResult, lua_script, parse_wrk_output, ratio, wrk_command

# --- /proc/PID/stat ----------------------------------------------------------------------------

STAT = (
    "4242 (python3) S 4200 4242 4242 0 -1 4194560 9000 0 12 0 "
    "1500 300 20 10 20 0 5 0 123456 2000000 3000 18446744073709551615"
)


def test_parse_pid_stat_reads_the_times_and_parent() -> None:
    stat = procstat.parse_pid_stat(STAT)
    assert (stat.pid, stat.comm, stat.ppid) == (4242, "python3", 4200)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (1500, 300, 20, 10)
    assert stat.starttime == 123456
    assert stat.own_ticks == 1800
    assert stat.total_ticks == 1830
    assert stat.key == (4242, 123456)


def test_parse_pid_stat_with_spaces_and_parentheses_in_the_name() -> None:
    line = STAT.replace("(python3)", "(postgres: 15/main: postgres db (127.0.0.1) idle)")
    stat = procstat.parse_pid_stat(line)
    assert stat.comm == "postgres: 15/main: postgres db (127.0.0.1) idle"
    assert (stat.ppid, stat.utime, stat.starttime) == (4200, 1500, 123456)


@pytest.mark.parametrize("line", ["", "garbage", "12 (x) S 1 2 3"])
def test_parse_pid_stat_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(ValueError):
        procstat.parse_pid_stat(line)


def test_ticks_to_ms() -> None:
    assert procstat.ticks_to_ms(150, 100) == 1500.0
    assert procstat.ticks_to_ms(1, 250) == 4.0


# --- /proc/stat --------------------------------------------------------------------------------


def test_parse_proc_stat_busy_and_total() -> None:
    text = "cpu  100 5 50 1000 20 3 2 7 40 0\ncpu0 50 2 25 500 10 1 1 3 20 0\nintr 1 2 3\n"
    machine = procstat.parse_proc_stat(text)
    assert machine.busy == 100 + 5 + 50 + 3 + 2 + 7  # guest (40) is inside user already
    assert machine.total == machine.busy + 1000 + 20


def test_parse_proc_stat_without_a_cpu_line() -> None:
    with pytest.raises(ValueError):
        procstat.parse_proc_stat("intr 1 2 3\n")


def test_machine_delta() -> None:
    start = procstat.MachineCpu(busy=1000, total=4000)
    end = procstat.MachineCpu(busy=1150, total=4200)
    delta = procstat.machine_delta(start, end, cpus=2)
    assert delta == {"busy_cpu_ms": 1500.0, "busy_share": 0.75, "cpus": 2}
    assert procstat.machine_delta(start, start, 2)["busy_share"] is None


# --- trees and deltas --------------------------------------------------------------------------


def stat(pid: int, ppid: int, utime: int = 0, cutime: int = 0, start: int = 1) -> procstat.PidStat:
    return procstat.PidStat(pid, f"p{pid}", ppid, utime, 0, cutime, 0, start)


def test_descendants_walks_the_whole_tree_and_ignores_missing_roots() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert procstat.descendants([10], parents) == {10, 11, 12, 13}
    assert procstat.descendants([10, 20], parents) == {10, 11, 12, 13, 20, 21}
    assert procstat.descendants([99], parents) == set()


def test_tree_totals_keys_by_pid_and_start_time() -> None:
    stats = {10: stat(10, 1, utime=5, cutime=2), 11: stat(11, 10, utime=3, start=7), 20: stat(20, 1, utime=9)}
    assert procstat.tree_totals([10], stats) == {(10, 1): 7, (11, 7): 3}


def test_tree_delta_counts_new_processes_from_zero() -> None:
    start = {(10, 1): 100}
    end = {(10, 1): 130, (11, 5): 20}
    delta = procstat.tree_delta(start, end)
    assert (delta.ticks, delta.appeared, delta.vanished) == (50, 1, 0)


def test_tree_delta_keeps_a_reaped_child_through_the_parents_cutime() -> None:
    # child 11 had 40 ticks at the start, used 15 more, exited and was reaped by 10 (cutime += 55)
    start = {(10, 1): 100, (11, 5): 40}
    end = {(10, 1): 100 + 10 + 55}
    delta = procstat.tree_delta(start, end)
    assert delta.ticks == 10 + 15
    assert (delta.vanished, delta.appeared, delta.clamped) == (1, 0, False)


def test_tree_delta_treats_a_reused_pid_as_a_new_process() -> None:
    start = {(11, 5): 40}
    end = {(11, 9): 3}  # same pid, later start time: another process
    delta = procstat.tree_delta(start, end)
    assert (delta.appeared, delta.vanished) == (1, 1)


def test_tree_delta_is_clamped_when_a_child_is_lost() -> None:
    delta = procstat.tree_delta({(10, 1): 100, (11, 5): 400}, {(10, 1): 110})
    assert delta.ticks == 0
    assert delta.clamped
    assert delta.as_dict(100)["clamped"] is True


def test_own_delta_loses_vanished_processes() -> None:
    start = {(1, 1): 10, (2, 1): 50}
    end = {(1, 1): 25, (3, 2): 5}
    delta = procstat.own_delta(start, end)
    assert delta.ticks == 15 + 5
    assert delta.as_dict(100)["cpu_ms"] == 200.0


# --- wrk ---------------------------------------------------------------------------------------

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:47345
  2 threads and 64 connections
  280 requests in 5.03s, 142.35KB read
Requests/sec:     55.66
BENCH duration_us 5000000
BENCH requests 290
BENCH bytes 145770
BENCH error_connect 0
BENCH error_read 1
BENCH error_write 0
BENCH error_status 12
BENCH error_timeout 2
BENCH latency_p50_us 1022840
BENCH latency_p99_us 1892134
BENCH latency_p99.9_us 1892911
BENCH latency_mean_us 1013195.5
BENCH status 202 151
BENCH status 400 10
BENCH status 202 129
BENCH status 201 2
BENCH status 500 2
"""


def test_parse_wrk_output_sums_the_threads() -> None:
    result = parse_wrk_output(WRK_OUTPUT)
    assert result.duration_s == 5.0
    assert result.requests == 290
    assert result.statuses == {201: 2, 202: 280, 400: 10, 500: 2}
    assert result.accepted == 282
    assert result.other_statuses == {400: 10, 500: 2}
    assert result.accepted_per_s == 56.4
    assert result.errors == {"connect": 0, "read": 1, "write": 0, "status": 12, "timeout": 2}
    assert result.socket_errors == 3
    assert result.latency_us["p50_us"] == 1022840
    assert result.as_dict()["latency_ms"]["p99.9"] == pytest.approx(1892.911)


def test_parse_wrk_output_without_a_summary() -> None:
    with pytest.raises(WrkOutputError, match="no summary"):
        parse_wrk_output("PANIC: unprotected error in call to Lua API\n")
    with pytest.raises(WrkOutputError):
        parse_wrk_output("BENCH duration_us 10\nBENCH requests x\n")


def test_lua_script_has_the_products_and_the_token() -> None:
    script = lua_script([3, 5, 8], 'tok"en')
    assert "local products = {3, 5, 8}" in script
    assert '["Authorization"] = "Bearer tok\\"en"' in script
    assert "'{\"product_id\":' .. product .. ',\"quantity\":1}'" in script
    assert "function response(status" in script
    assert "BENCH status %d %d" in script
    assert "Authorization" not in lua_script([1], None)
    with pytest.raises(ValueError):
        lua_script([], "t")


def test_wrk_command() -> None:
    command = wrk_command(
        "http://127.0.0.1:8000", "s.lua", threads=2, connections=64, duration=20, timeout=30, seed=7
    )
    assert command[1:5] == ["-t2", "-c64", "-d20s", "--timeout=30s"]
    assert command[-3:] == ["http://127.0.0.1:8000", "--", "7"]


# --- figures -----------------------------------------------------------------------------------


def test_per_unit_ms_and_the_total_over_the_main_kinds() -> None:
    cpu = {"api": 1000.0, "worker": 500.0, "postgres": 300.0, "redis": 200.0, "loadgen": 100.0}
    figures = per_unit_ms(cpu, 100)
    assert figures["api"] == 10.0
    assert figures["loadgen"] == 1.0
    assert figures["total"] == 20.0  # the load generator is not in the total
    assert per_unit_ms(cpu, 0) == {k: None for k in [*cpu, "total"]}
    assert per_unit_ms({"api": 30.0}, 3)["total"] == 10.0


def test_confirmed_rate() -> None:
    assert confirmed_rate(200, 1000.0, 1010.0) == 20.0
    assert confirmed_rate(0, 1000.0, 1010.0) is None
    assert confirmed_rate(10, 1000.0, None) is None
    assert confirmed_rate(10, 1000.0, 999.0) is None


def test_ratio() -> None:
    assert ratio(50, 2000) == 0.025
    assert ratio(None, 10) is None
    assert ratio(10, 0) is None
    assert ratio(10, None) is None


def test_ratios_of_a_run() -> None:
    anchors = {"http": {"requests_per_s": 2000.0}, "celery": {"tasks_per_s": 400.0}}
    closed = {"accepted_per_s": 100.0, "confirmed_per_s": 80.0}
    assert ratios(anchors, closed) == {"accepted_over_bare": 0.05, "confirmed_over_celery_noop": 0.2}
    assert ratios({}, closed) == {"accepted_over_bare": None, "confirmed_over_celery_noop": None}


def test_ms_summary() -> None:
    summary = ms_summary([0.001 * i for i in range(1, 101)])
    assert summary["count"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["max_ms"] == 100.0
    assert ms_summary([]) == {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}


def test_poisson_schedule() -> None:
    offsets = poisson_schedule(200.0, 10.0, random.Random(1), cap=100_000)
    assert offsets == sorted(offsets)
    assert all(0 <= t < 10.0 for t in offsets)
    assert 1800 < len(offsets) < 2200  # about rate x duration
    assert offsets == poisson_schedule(200.0, 10.0, random.Random(1), cap=100_000)
    assert len(poisson_schedule(200.0, 10.0, random.Random(1), cap=50)) == 50
    with pytest.raises(ValueError):
        poisson_schedule(0, 10.0, random.Random(1), cap=10)


def test_cli_module_follows_the_checkout(tmp_path: Path) -> None:
    assert cli_module(tmp_path) == "core.cli"  # a checkout from before the CLI left core
    (tmp_path / "orderflow").mkdir()
    (tmp_path / "orderflow" / "cli.py").write_text("")
    assert cli_module(tmp_path) == "orderflow"
    assert cli_module(Path(__file__).resolve().parents[2]) == "orderflow"  # this checkout


def test_parse_counts() -> None:
    assert parse_counts("1, 2,4", "--sweep") == [1, 2, 4]
    for bad in ("", "1,x", "0,1", "2,2", "1,999"):
        with pytest.raises(ValueError):
            parse_counts(bad, "--sweep", 1, 64)


def wrk_result(accepted: int, duration: float = 10.0, cpu_ms: float | None = 50.0) -> WrkResult:
    return WrkResult(
        duration_s=duration,
        requests=accepted + 3,
        statuses={202: accepted, 401: 3},
        errors={"connect": 0, "read": 0, "write": 0, "status": 3, "timeout": 0},
        latency_us={"p50_us": 2000.0, "p99_us": 9000.0},
        cpu_ms=cpu_ms,
    )


def test_closed_figures_divide_cpu_by_the_orders_of_the_window() -> None:
    window = {
        "orders": 520,  # 500 202s seen by wrk + 20 whose answer wrk cut off
        "statuses": {"confirmed": 520},
        "processed": 520,
        "confirmed": 520,
        "first_created": 1000.01,
        "last_processed": 1013.0,
    }
    cpu = {
        "window_s": 13.0,
        "kinds": {
            "api": {"cpu_ms": 2600.0},
            "worker": {"cpu_ms": 1300.0},
            "postgres": {"cpu_ms": 520.0},
            "redis": {"cpu_ms": 52.0},
            "loadgen": {"cpu_ms": 52.0},
        },
        "machine": {"busy_cpu_ms": 20000.0, "busy_share": 0.77, "cpus": 2},
    }
    figures = closed_figures(wrk_result(500), window, 1000.0, cpu, settled=True)
    assert figures["accepted_per_s"] == 50.0
    assert figures["confirmed_per_s"] == 40.0
    assert figures["confirm_seconds"] == 13.0
    assert figures["other_statuses"] == {"401": 3}
    assert figures["cpu_ms_per_order"]["api"] == 5.0
    assert figures["cpu_ms_per_order"]["total"] == pytest.approx((2600 + 1300 + 520 + 52) / 520, abs=1e-3)
    assert figures["cpu_ms_per_order"]["loadgen"] == 0.1
    assert figures["cores_busy"]["api"] == 0.2


def test_open_figures_from_samples_and_database_times() -> None:
    samples = [
        OpenSample(intended=10.0, sent=10.001, answered=10.020, status=202, order_id=1),
        OpenSample(intended=10.1, sent=10.105, answered=10.150, status=202, order_id=2),
        OpenSample(intended=10.2, sent=10.2, status=None, error="ServerDisconnectedError"),
    ]
    times = {1: ("confirmed", 0.030), 2: ("pending", None)}
    figures = open_figures(samples, times, rate=10.0, duration=1.0, dispatch=0.2)
    assert figures["http"] == {"202": 2, "error:ServerDisconnectedError": 1}
    assert figures["submit_latency"]["count"] == 2
    assert figures["submit_latency"]["max_ms"] == 50.0
    assert figures["submit_to_final_db"]["count"] == 1
    assert figures["submit_to_final_db"]["p50_ms"] == 30.0
    assert figures["final_statuses"] == {"confirmed": 1, "pending": 1}
    assert figures["submit_p99_ms_by_second"] == [49.7]  # the answered two (20, 50 ms), both in second 0


# --- stock checks ------------------------------------------------------------------------------


def product(
    pid: int, initial: int, stock: int, ledger: int | None = None, hot: bool = False
) -> dict[str, Any]:
    return {
        "id": pid,
        "initial": initial,
        "stock": stock,
        "ledger": stock if ledger is None else ledger,
        "hot": hot,
    }


def checks_by_name(checks: list[dict[str, Any]]) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in checks}


def test_stock_checks_pass() -> None:
    products = [product(1, 100, 90), product(2, 100, 95), product(3, 500, 0, hot=True)]
    checks = stock_checks(products, regular_confirmed=15, hot={"product_id": 3, "confirmed": 500}, pending=0)
    assert all(checks_by_name(checks).values())
    assert set(checks_by_name(checks)) == {
        "all_orders_final",
        "stock_accounting",
        "ledger_matches_stock",
        "stock_non_negative",
        "hot_no_oversell",
    }


def test_stock_checks_catch_an_oversell_and_a_broken_ledger() -> None:
    products = [product(1, 100, 90, ledger=91), product(3, 500, -1, hot=True)]
    checks = checks_by_name(stock_checks(products, 10, {"product_id": 3, "confirmed": 500}, pending=2))
    assert checks == {
        "all_orders_final": False,
        "stock_accounting": True,
        "ledger_matches_stock": False,
        "stock_non_negative": False,
        "hot_no_oversell": False,
    }


def test_stock_checks_without_a_hot_run() -> None:
    checks = checks_by_name(stock_checks([product(1, 100, 90)], 9, None, pending=0))
    assert checks["stock_accounting"] is False
    assert "hot_no_oversell" not in checks


# --- profile summary ---------------------------------------------------------------------------


def test_frame_function_drops_the_line_number() -> None:
    assert frame_function("run (uvicorn/server.py:69)") == "run (uvicorn/server.py)"
    assert frame_function("<module> (<string>)") == "<module> (<string>)"
    assert frame_function("odd (a:b)") == "odd (a:b)"


def test_summarize_collapsed_counts_own_and_total_samples() -> None:
    text = (
        "main (app.py:1);handle (app.py:10);query (db.py:5) 30\n"
        "main (app.py:1);handle (app.py:11);query (db.py:7) 10\n"
        "main (app.py:1);idle (loop.py:3) 60\n"
        "not a sample line\n"
    )
    summary = summarize_collapsed(text, top=2)
    assert summary["samples"] == 100
    assert summary["own"] == [
        {"function": "idle (loop.py)", "samples": 60, "share": 0.6},
        {"function": "query (db.py)", "samples": 40, "share": 0.4},
    ]
    assert summary["total"][0] == {"function": "main (app.py)", "samples": 100, "share": 1.0}
    assert summary["total"][1]["function"] == "idle (loop.py)"
    text_out = profile_text("api", summary)
    assert "100 samples" in text_out
    assert "query (db.py)" in text_out


# --- anchors -----------------------------------------------------------------------------------


def test_anchor_conf_keeps_how_tasks_are_carried_and_drops_the_projects_routing() -> None:
    project = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "worker_send_task_events": True,
        "broker_transport_options": {"visibility_timeout": 600, "global_keyprefix": "orderflow:"},
        "include": ["workers.tasks"],
        "task_routes": {"orderflow.process_order": {"queue": "orders"}},
        "task_default_queue": "orders",
        "beat_schedule": {"sweep": {}},
    }
    conf = anchor_conf(project, "bench1noop:", "noop-q")
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"] == {"visibility_timeout": 600, "global_keyprefix": "bench1noop:"}
    assert conf["task_default_queue"] == "noop-q"
    assert not {"include", "task_routes", "beat_schedule"} & conf.keys()
    assert project["broker_transport_options"]["global_keyprefix"] == "orderflow:"  # not mutated


# --- options -----------------------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return build_stack_parser().parse_args(list(argv))


def test_stack_defaults_are_valid() -> None:
    args = parse()
    assert validate_stack(args) == ([], None)
    assert (args.api_processes, args.worker_processes, args.concurrency, args.duration) == (2, 2, 64, 20)
    assert (args.hot, args.open, args.anchors, args.hot_stock, args.hot_orders) == (
        True,
        True,
        True,
        500,
        2000,
    )
    assert args.out.name == "stack-latest.json"
    assert (args.project / "bench").is_dir()  # the checkout the bench lives in


def test_stack_sweep_and_switches() -> None:
    args = parse("--sweep", "1,2,4", "--no-hot", "--no-open", "--no-anchors", "--profile", "5")
    assert validate_stack(args) == ([1, 2, 4], None)
    assert (args.hot, args.open, args.anchors, args.profile) == (False, False, False, 5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "0"],
        ["--api-processes", "0"],
        ["--worker-processes", "65"],
        ["--threads", "8", "--concurrency", "4"],
        ["--sweep", "1,1"],
        ["--sweep", "a"],
        ["--rate", "0"],
        ["--rate", "100000", "--open-duration", "100"],
        ["--prefer-wait", "-1"],
        ["--profile", "601"],
        ["--redis-db", "16"],
        ["--settle-timeout", "0"],
        ["--hot-orders", "0"],
    ],
)
def test_stack_rejects_bad_options(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        validate_stack(parse(*argv))


def test_stack_bad_options_exit_2_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "--duration", "0"]) == 2
    assert "--duration must be within" in capsys.readouterr().err


# --- report ------------------------------------------------------------------------------------


def test_render_stack_prints_every_section() -> None:
    results = new_stack_results({})
    results["project"] = {"dir": "/work/x", "commit": "abc123def4567890", "dirty_files": 2}
    results["stack"] = {"api_processes": 2, "worker_processes": 2}
    results["anchors"] = {
        "http": {
            "requests_per_s": 2500.0,
            "cpu_ms_per_request": {"server": 0.36, "loadgen": 0.07},
            "wrk": {},
        },
        "celery": {"tasks": 3000, "seconds": 10.0, "tasks_per_s": 300.0, "cpu_ms_per_task": {"worker": 3.3}},
    }
    cpu = {
        "window_s": 10.0,
        "kinds": {"api": {"cpu_ms": 100.0}},
        "machine": {"busy_cpu_ms": 300.0, "busy_share": 0.5},
    }
    results["closed"] = {
        "accepted_per_s": 50.0,
        "confirmed_per_s": 45.0,
        "orders_in_window": 520,
        "confirm_seconds": 11.5,
        "statuses": {"confirmed": 520},
        "wrk": {"latency_ms": {"p50": 100.0, "p99": 900.0}, "errors": {"timeout": 1}},
        "other_statuses": {"500": 1},
        "cpu": cpu,
        "cpu_ms_per_order": {"api": 10.0, "total": 25.0, "loadgen": 0.2},
    }
    results["ratios"] = {"accepted_over_bare": 0.02, "confirmed_over_celery_noop": 0.15}
    results["hot"] = {
        "orders": 2000,
        "initial_stock": 500,
        "http": {"202": 700, "400": 1300},
        "refused_at_intake": 1300,
        "confirmed": 500,
        "rejected_by_worker": 200,
        "failed": 0,
        "http_5xx": 0,
        "transport_errors": 0,
        "seconds": 20.0,
        "orders_per_s": 100.0,
        "stock": 0,
        "ledger": 0,
    }
    summary = {"count": 10, "p50_ms": 5.0, "p99_ms": 50.0}
    results["open"] = {
        "rate": 25.0,
        "duration_s": 10.0,
        "scheduled": 250,
        "submit_latency": summary,
        "submit_to_final_db": summary,
        "http": {"202": 250},
        "send_lag": summary,
    }
    results["sweep"] = [{"workers": 1, "closed": results["closed"]}]
    results["invariants"] = {
        "passed": False,
        "checks": [{"name": "stock_accounting", "passed": False, "detail": "x"}],
    }
    results["notes"].append("a note")
    out = io.StringIO()
    render_stack(Console(file=out, width=200), results)
    text = out.getvalue()
    for expected in (
        "abc123def456",
        "2,500.0",
        "anchor: Celery no-op",
        "closed loop",
        "10.00 / - / - / - / 25.00",
        "0.02 (2.0 %)",
        "hot product",
        "open model",
        "worker sweep",
        "FAIL",
        "a note",
    ):
        assert expected in text, expected
