"""CPU time of process trees and of the machine, from /proc (Linux), for `python -m bench stack`.

A *kind* (api, worker, postgres, redis) is a set of root pids and all their descendants. A snapshot
records, for every process of a kind, `utime + stime + cutime + cstime` in clock ticks, keyed by
(pid, starttime) so a reused pid is not mistaken for the process it replaced. The CPU a kind used
between two snapshots is

    sum(totals at the end) - sum(totals at the start)

* a process that appeared during the window counts from 0 (it is only in the end snapshot);
* a process that vanished during the window and was reaped by a process of the same tree (a
  PostgreSQL backend reaped by the postmaster, a pool child by its Celery parent) is not lost: its
  whole CPU time moved into the parent's cutime/cstime, and its start total is subtracted, so what
  remains is what it used inside the window;
* a process that vanished and was reaped outside the tree, or whose parent ignores SIGCHLD, is lost
  (and its start total would be subtracted: the delta is clamped at 0). None of the measured
  servers does that;
* a process still a zombie at the end is read as it is (its times are final).

The pure parts (parsing, trees, deltas) take text and mappings, so they are unit-tested without
/proc (tests/bench/test_bench_stack.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")

ProcessKey = tuple[int, int]
"""(pid, starttime in ticks since boot): one process, even if its pid is reused later."""


@dataclass(frozen=True, slots=True)
class PidStat:
    """The fields of /proc/PID/stat the benchmark uses (times in clock ticks)."""

    pid: int
    comm: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    starttime: int

    @property
    def own_ticks(self) -> int:
        return self.utime + self.stime

    @property
    def total_ticks(self) -> int:
        """Own CPU plus that of the children it has reaped."""
        return self.utime + self.stime + self.cutime + self.cstime

    @property
    def key(self) -> ProcessKey:
        return (self.pid, self.starttime)


def parse_pid_stat(text: str) -> PidStat:
    """One /proc/PID/stat line. The command name is between the first '(' and the *last* ')' (it may
    itself contain spaces and parentheses). Raises ValueError for a malformed line."""
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 1 or close_paren < open_paren:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1 : close_paren]
    fields = text[close_paren + 1 :].split()
    # fields[0] is field 3 of proc(5) (state): field n is fields[n - 3]
    if len(fields) < 20:
        raise ValueError(f"short /proc/PID/stat line: {text[:80]!r}")
    return PidStat(
        pid=pid,
        comm=comm,
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
        starttime=int(fields[19]),
    )


@dataclass(frozen=True, slots=True)
class MachineCpu:
    """The aggregate `cpu` line of /proc/stat, in clock ticks."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> MachineCpu:
    """The first `cpu ` line of /proc/stat: busy = user + nice + system + irq + softirq + steal,
    total = busy + idle + iowait (guest time is already inside user and nice). Raises ValueError
    when there is no such line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
            busy = user + nice + system + irq + softirq + steal
            return MachineCpu(busy=busy, total=busy + idle + iowait)
    raise ValueError("no 'cpu ' line in /proc/stat")


def machine_delta(start: MachineCpu, end: MachineCpu, cpus: int) -> dict[str, float | None]:
    """Busy CPU of the whole machine between two readings: ms of CPU, and the busy share of all
    CPUs (0..1)."""
    busy = end.busy - start.busy
    total = end.total - start.total
    return {
        "busy_cpu_ms": round(ticks_to_ms(busy), 1),
        "busy_share": None if total <= 0 else round(busy / total, 4),
        "cpus": cpus,
    }


def ticks_to_ms(ticks: int | float, ticks_per_second: int = CLOCK_TICKS) -> float:
    return ticks * 1000.0 / ticks_per_second


def descendants(roots: Iterable[int], parents: Mapping[int, int]) -> set[int]:
    """The roots that exist in `parents` (pid -> ppid) and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [r for r in roots if r in parents]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


def tree_totals(roots: Iterable[int], stats: Mapping[int, PidStat]) -> dict[ProcessKey, int]:
    """(pid, starttime) -> total ticks of every process of the trees under `roots`."""
    members = descendants(roots, {pid: s.ppid for pid, s in stats.items()})
    return {stats[pid].key: stats[pid].total_ticks for pid in members}


def pid_totals(pids: Iterable[int], stats: Mapping[int, PidStat]) -> dict[ProcessKey, int]:
    """(pid, starttime) -> *own* ticks of the given processes alone (no children, no reaped ones):
    for a set that is not a tree, like the backends of one database."""
    return {stats[p].key: stats[p].own_ticks for p in pids if p in stats}


@dataclass(frozen=True, slots=True)
class TreeDelta:
    ticks: int
    processes_start: int
    processes_end: int
    appeared: int
    vanished: int
    clamped: bool = False

    def as_dict(self, ticks_per_second: int = CLOCK_TICKS) -> dict[str, object]:
        return {
            "cpu_ms": round(ticks_to_ms(self.ticks, ticks_per_second), 1),
            "processes_start": self.processes_start,
            "processes_end": self.processes_end,
            "appeared": self.appeared,
            "vanished": self.vanished,
            **({"clamped": True} if self.clamped else {}),
        }


def tree_delta(start: Mapping[ProcessKey, int], end: Mapping[ProcessKey, int]) -> TreeDelta:
    """CPU ticks used between two snapshots of one kind (see the module docstring)."""
    raw = sum(end.values()) - sum(start.values())
    return TreeDelta(
        ticks=max(0, raw),
        processes_start=len(start),
        processes_end=len(end),
        appeared=len(end.keys() - start.keys()),
        vanished=len(start.keys() - end.keys()),
        clamped=raw < 0,
    )


def own_delta(start: Mapping[ProcessKey, int], end: Mapping[ProcessKey, int]) -> TreeDelta:
    """CPU ticks of a set of processes measured by own ticks (`pid_totals`): processes that appear
    count from 0, those that vanish are lost (nothing of theirs is in the end snapshot)."""
    ticks = sum(value - start.get(key, 0) for key, value in end.items())
    return TreeDelta(
        ticks=max(0, ticks),
        processes_start=len(start),
        processes_end=len(end),
        appeared=len(end.keys() - start.keys()),
        vanished=len(start.keys() - end.keys()),
    )


# --- reading /proc -----------------------------------------------------------------------------


def read_pid_stat(pid: int | str, proc: Path = PROC) -> PidStat | None:
    """/proc/PID/stat, or None when the process is gone (or the line does not parse)."""
    try:
        return parse_pid_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def read_all(proc: Path = PROC) -> dict[int, PidStat]:
    """Every process visible in /proc, by pid."""
    stats: dict[int, PidStat] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return stats
    for entry in entries:
        if entry.isdigit():
            stat = read_pid_stat(entry, proc)
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def read_machine(proc: Path = PROC) -> MachineCpu:
    return parse_proc_stat((proc / "stat").read_text())


def children_of(pid: int, stats: Mapping[int, PidStat]) -> list[int]:
    return sorted(p for p, s in stats.items() if s.ppid == pid)


def cmdline(pid: int, proc: Path = PROC) -> str:
    try:
        return (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
