"""The benchmark's output: a rich table, the JSON results file and the worker-sweep plot."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    """Write `results` to `path` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


def plot_sweep(path: Path, sweep: Sequence[Mapping[str, Any]]) -> Path:
    """Accepted and confirmed orders/s against the worker count, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [entry["workers"] for entry in sweep]
    accepted = [entry["closed"].get("accepted_per_s") or 0 for entry in sweep]
    confirmed = [entry["closed"].get("confirmed_per_s") or 0 for entry in sweep]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.plot(workers, accepted, marker="o", label="accepted orders/s (202)")
    axes.plot(workers, confirmed, marker="s", label="confirmed orders/s")
    axes.set_xlabel("Celery worker processes (--concurrency)")
    axes.set_ylabel("orders/s")
    axes.set_xticks(workers)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title("orderflow closed-loop throughput by worker count")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.2f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".rstrip()


def _latency(summary: Mapping[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return " / ".join(_fmt(summary.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")) + " ms"


def _counts(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items())


def _closed_rows(table: Table, closed: Mapping[str, Any], label: str) -> None:
    table.add_row(label, "orders / concurrency", f"{closed['orders']:,} / {closed['concurrency']}")
    table.add_row("", "accepted orders/s", _fmt(closed.get("accepted_per_s")))
    table.add_row("", "confirmed orders/s", _fmt(closed.get("confirmed_per_s")))
    table.add_row("", "submit latency p50/p95/p99", _latency(closed.get("submit_latency")))
    table.add_row(
        "",
        "accepted / refused / errors",
        f"{closed['accepted']:,} / {closed['refused']:,} / {_counts(closed.get('errors'))}",
    )
    table.add_row("", "outcomes", _counts(closed.get("outcomes")))


def _figures_table(title: str) -> Table:
    """An empty table of (phase, figure, value) rows."""
    table = Table(title=title, show_lines=False)
    table.add_column("phase", style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    return table


def render(console: Console, results: Mapping[str, Any]) -> None:
    """Print the figures of a run."""
    table = _figures_table("orderflow benchmark")

    setup = results.get("setup") or {}
    table.add_row(
        "setup",
        "products x stock",
        f"{setup.get('products', 0):,} x {setup.get('stock_per_product', 0):,}",
    )
    closed = results.get("closed")
    if closed:
        _closed_rows(table, closed, "closed loop")
    opened = results.get("open")
    if opened:
        table.add_row(
            "open model",
            "rate x duration",
            f"{opened['rate']:g}/s x {opened['duration_seconds']:g} s ({opened['scheduled']:,} orders)",
        )
        table.add_row("", "submit latency p50/p95/p99", _latency(opened.get("submit_latency")))
        table.add_row(
            "",
            "submit->confirmed p50/p95/p99",
            _latency(opened.get("submit_to_confirmed_latency")),
        )
        table.add_row(
            "",
            "accepted / refused / errors",
            f"{opened['accepted']:,} / {opened['refused']:,} / {_counts(opened.get('errors'))}",
        )
        table.add_row("", "outcomes", _counts(opened.get("outcomes")))
        table.add_row("", "send lag p99 (generator)", _fmt(opened["dispatch_lag"].get("p99_ms"), "ms"))
    invariants = results.get("invariants") or {}
    for index, check in enumerate(invariants.get("checks", [])):
        verdict = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
        table.add_row("invariants" if index == 0 else "", check["name"], verdict)
    console.print(table)

    sweep = results.get("sweep")
    if sweep:
        sweep_table = Table(title="worker sweep (closed loop)")
        sweep_table.add_column("workers", justify="right")
        sweep_table.add_column("accepted/s", justify="right")
        sweep_table.add_column("confirmed/s", justify="right")
        sweep_table.add_column("submit p50/p95/p99", justify="right")
        sweep_table.add_column("outcomes")
        for entry in sweep:
            c = entry["closed"]
            sweep_table.add_row(
                str(entry["workers"]),
                _fmt(c.get("accepted_per_s")),
                _fmt(c.get("confirmed_per_s")),
                _latency(c.get("submit_latency")),
                _counts(c.get("outcomes")),
            )
        console.print(sweep_table)
    for note in results.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def _latency_store(summary: Mapping[str, Any] | None, keys: Sequence[str]) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return " / ".join(_fmt(summary.get(k)) for k in keys) + " ms"


STORE_LISTING_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
STORE_ORDER_KEYS = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


def render_store(console: Console, results: Mapping[str, Any]) -> None:
    """Print the figures of a store API run (`python -m bench store`)."""
    table = _figures_table("orderflow store API benchmark")

    setup = results.get("setup") or {}
    table.add_row(
        "setup",
        "managers x products x stock",
        f"{setup.get('managers', 0):,} x {setup.get('products_per_manager', 0):,} x "
        f"{setup.get('stock_per_product', 0):,}",
    )
    limit = setup.get("rate_limit") or {}
    table.add_row(
        "",
        "rate limit: remaining / planned per manager",
        f"{_fmt(limit.get('remaining_min'))} / {_fmt(limit.get('planned_max'))}"
        if limit.get("checked")
        else "not reported by the API",
    )
    for listing in results.get("listing") or []:
        label = f"listing C={listing['concurrency']}"
        if listing.get("status"):
            label += f" ({listing['status']})"
        for phase in ("miss", "hit"):
            figures = listing[phase]
            table.add_row(
                label if phase == "miss" else "",
                f"cache {phase}: p50 / p90 / p99 / mean",
                _latency_store(figures.get("latency"), STORE_LISTING_KEYS),
            )
            table.add_row("", f"cache {phase}: reads/s", _fmt(figures.get("reads_per_s")))
            unexpected = figures.get("unexpected_cache", 0)
            verdict = "[green]0[/]" if not unexpected else f"[red]{unexpected:,}[/]"
            table.add_row(
                "",
                f"cache {phase}: X-Cache not {figures['expected_cache']}",
                f"{verdict} ({_counts(figures.get('x_cache'))})",
            )
            if figures.get("errors") or set(figures.get("http") or {}) - {"200"}:
                table.add_row(
                    "",
                    f"cache {phase}: HTTP / errors",
                    f"{_counts(figures.get('http'))} / {_counts(figures.get('errors'))}",
                )
            if phase == "miss":
                table.add_row(
                    "",
                    "invalidating write: p50 / p90 / p99 / mean",
                    _latency_store(figures.get("write_latency"), STORE_LISTING_KEYS),
                )
    orders = results.get("orders")
    if orders:
        table.add_row(
            "orders/process", "orders / concurrency", f"{orders['orders']:,} / {orders['concurrency']}"
        )
        table.add_row("", "processed orders/s", _fmt(orders.get("processed_per_s")))
        table.add_row(
            "",
            "end to end p50 / p90 / p99 / max",
            _latency_store(orders.get("latency"), STORE_ORDER_KEYS),
        )
        table.add_row("", "first answer by HTTP status", _counts(orders.get("http")))
        table.add_row("", "outcomes", _counts(orders.get("outcomes")))
        if orders.get("followed_202"):
            table.add_row("", "202 followed / polls", f"{orders['followed_202']:,} / {orders['polls']:,}")
        if orders.get("total_amount_mismatches"):
            table.add_row("", "total_amount mismatches", f"[red]{orders['total_amount_mismatches']:,}[/]")
    invariants = results.get("invariants") or {}
    for index, check in enumerate(invariants.get("checks", [])):
        verdict = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
        detail = "" if check["passed"] else f" ({check['detail']})"
        table.add_row("checks" if index == 0 else "", check["name"], verdict + detail)
    console.print(table)
    for note in results.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def _ms_pair(summary: Mapping[str, Any] | None, keys: Sequence[str] = ("p50_ms", "p99_ms")) -> str:
    if not summary or not summary.get("count", 1):
        return "-"
    return " / ".join(_fmt(summary.get(k)) for k in keys) + " ms"


def _per_kind(figures: Mapping[str, Any] | None, kinds: Sequence[str]) -> str:
    if not figures:
        return "-"
    return " / ".join(_fmt(figures.get(k)) for k in kinds)


STACK_KINDS = ("api", "worker", "postgres", "redis", "total")


def render_stack(console: Console, results: Mapping[str, Any]) -> None:
    """Print the figures of a whole-stack run (`python -m bench stack`)."""
    table = _figures_table("orderflow whole-stack benchmark")
    project = results.get("project") or {}
    stack = results.get("stack") or {}
    if project:
        dirty = project.get("dirty_files")
        table.add_row(
            "project",
            "dir @ commit",
            f"{project.get('dir')} @ {(project.get('commit') or '?')[:12]}"
            + (f" (+{dirty} changed files)" if dirty else ""),
        )
    if stack.get("api_processes"):
        table.add_row(
            "", "API processes / worker processes", f"{stack['api_processes']} / {stack['worker_processes']}"
        )

    anchors = results.get("anchors") or {}
    http = anchors.get("http")
    if http:
        per = http.get("cpu_ms_per_request") or {}
        table.add_row("anchor: bare endpoint", "requests/s", _fmt(http.get("requests_per_s")))
        table.add_row(
            "", "CPU ms/request: server / wrk", f"{_fmt(per.get('server'))} / {_fmt(per.get('loadgen'))}"
        )
        table.add_row("", "latency p50 / p99", _wrk_latency(http.get("wrk")))
        if http.get("other_statuses"):
            table.add_row("", "other statuses", _counts(http["other_statuses"]))
    celery = anchors.get("celery")
    if celery:
        per = celery.get("cpu_ms_per_task") or {}
        table.add_row(
            "anchor: Celery no-op",
            "tasks / seconds",
            f"{celery['tasks']:,} / {_fmt(celery.get('seconds'))} s",
        )
        table.add_row("", "tasks/s end to end", _fmt(celery.get("tasks_per_s")))
        table.add_row(
            "",
            "CPU ms/task: worker / redis / publisher",
            " / ".join(_fmt(per.get(k)) for k in ("worker", "redis", "publisher")),
        )

    closed = results.get("closed")
    if closed:
        _stack_closed_rows(table, closed, "closed loop (wrk)")
    ratios = results.get("ratios") or {}
    if ratios:
        table.add_row("ratios", "accepted/s / bare endpoint req/s", _ratio(ratios.get("accepted_over_bare")))
        table.add_row(
            "", "confirmed/s / Celery no-op tasks/s", _ratio(ratios.get("confirmed_over_celery_noop"))
        )

    hot = results.get("hot")
    if hot:
        table.add_row(
            "hot product", "orders / initial stock", f"{hot['orders']:,} / {hot['initial_stock']:,}"
        )
        table.add_row("", "HTTP answers", _counts(hot.get("http")))
        table.add_row(
            "",
            "confirmed / refused at intake / rejected by worker",
            f"{hot['confirmed']:,} / {hot['refused_at_intake']:,} / {hot['rejected_by_worker']:,}",
        )
        bad = hot["failed"] + hot["http_5xx"] + hot["transport_errors"]
        table.add_row(
            "",
            "failed / 5xx / transport errors",
            ("[red]" if bad else "")
            + f"{hot['failed']:,} / {hot['http_5xx']:,} / {hot['transport_errors']:,}"
            + ("[/]" if bad else ""),
        )
        table.add_row(
            "", "seconds / orders/s", f"{_fmt(hot.get('seconds'))} s / {_fmt(hot.get('orders_per_s'))}"
        )
        table.add_row("", "stock / ledger sum", f"{_fmt(hot.get('stock'))} / {_fmt(hot.get('ledger'))}")

    for key, label in (("open", "open model"), ("open_prefer", "open, Prefer: wait")):
        opened = results.get(key)
        if not opened:
            continue
        table.add_row(
            label,
            "rate x duration (orders)",
            f"{opened['rate']:g}/s x {opened['duration_s']:g} s ({opened['scheduled']:,})",
        )
        table.add_row("", "submit latency p50 / p99", _ms_pair(opened.get("submit_latency")))
        table.add_row("", "submit->final (DB) p50 / p99", _ms_pair(opened.get("submit_to_final_db")))
        table.add_row("", "HTTP answers", _counts(opened.get("http")))
        table.add_row("", "send lag p99 (generator)", _ms_pair(opened.get("send_lag"), ("p99_ms",)))

    profile = results.get("profile")
    if profile:
        for name in ("api", "worker"):
            if name in profile:
                entry = profile[name]
                table.add_row(
                    "profile" if name == "api" else "", name, entry.get("summary") or entry.get("error", "-")
                )

    invariants = results.get("invariants") or {}
    for index, check in enumerate(invariants.get("checks", [])):
        verdict = "[green]pass[/]" if check["passed"] else f"[red]FAIL[/] ({check['detail']})"
        table.add_row("checks" if index == 0 else "", check["name"], verdict)
    if results.get("error"):
        table.add_row("error", "", f"[red]{results['error']}[/]")
    console.print(table)

    sweep = results.get("sweep")
    if sweep:
        sweep_table = Table(title="worker sweep (closed loop, wrk)")
        sweep_table.add_column("workers", justify="right")
        sweep_table.add_column("accepted/s", justify="right")
        sweep_table.add_column("confirmed/s", justify="right")
        sweep_table.add_column("CPU ms/order api / worker / postgres / redis / total", justify="right")
        for entry in sweep:
            c = entry["closed"]
            sweep_table.add_row(
                str(entry["workers"]),
                _fmt(c.get("accepted_per_s")),
                _fmt(c.get("confirmed_per_s")),
                _per_kind(c.get("cpu_ms_per_order"), STACK_KINDS),
            )
        console.print(sweep_table)
    for note in results.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ({value * 100:.1f} %)"


def _wrk_latency(wrk: Mapping[str, Any] | None) -> str:
    latency = (wrk or {}).get("latency_ms") or {}
    if not latency:
        return "-"
    return f"{_fmt(latency.get('p50'))} / {_fmt(latency.get('p99'))} ms"


def _stack_closed_rows(table: Table, closed: Mapping[str, Any], label: str) -> None:
    wrk = closed.get("wrk") or {}
    table.add_row(label, "accepted/s (wrk 202s / duration)", _fmt(closed.get("accepted_per_s")))
    table.add_row("", "confirmed/s (DB processed_at)", _fmt(closed.get("confirmed_per_s")))
    table.add_row(
        "",
        "orders in window / seconds to last final",
        f"{closed['orders_in_window']:,} / {_fmt(closed.get('confirm_seconds'))} s",
    )
    table.add_row("", "final statuses", _counts(closed.get("statuses")))
    table.add_row("", "submit latency p50 / p99 (wrk)", _wrk_latency(wrk))
    others = closed.get("other_statuses") or {}
    errors = {k: v for k, v in (wrk.get("errors") or {}).items() if v and k != "status"}
    if others or errors:
        table.add_row("", "other statuses / socket errors", f"[red]{_counts(others)} / {_counts(errors)}[/]")
    per = closed.get("cpu_ms_per_order") or {}
    table.add_row("", "CPU ms/order " + " / ".join(STACK_KINDS), _per_kind(per, STACK_KINDS))
    table.add_row("", "CPU ms/order wrk / bench", f"{_fmt(per.get('loadgen'))} / {_fmt(per.get('bench'))}")
    if "postgres_run_backends" in per:
        table.add_row("", "CPU ms/order postgres: run's backends", _fmt(per.get("postgres_run_backends")))
    cpu = closed.get("cpu") or {}
    machine = cpu.get("machine") or {}
    accounted = sum(float(v.get("cpu_ms", 0)) for v in (cpu.get("kinds") or {}).values())
    if machine:
        busy = machine.get("busy_cpu_ms") or 0
        table.add_row(
            "",
            "machine busy (share of all CPUs) / not in any kind",
            f"{_fmt((machine.get('busy_share') or 0) * 100)} % / {_fmt(max(0.0, busy - accounted))} ms "
            f"over {_fmt(cpu.get('window_s'))} s",
        )
