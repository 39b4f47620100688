"""Start and stop the Celery worker of a `--workers` sweep.

One `celery -A workers.celery_app worker --concurrency k --pool prefork` per worker count k, run in
its own process group from the project root with the benchmark's environment (so it talks to the
same broker and database as the API). It is ready when it answers `celery inspect ping` by its
node name; it is stopped with SIGTERM (warm shutdown), then SIGKILL to its process group after a grace
period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from bench.client import BenchError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CELERY_APP = "workers.celery_app"
STOP_GRACE_SECONDS = 20.0

_running: set[CeleryWorker] = set()
"""Workers started and not yet stopped, for `stop_all_now` when the benchmark is interrupted."""


def celery_command(*args: str) -> list[str]:
    """`celery -A workers.celery_app <args>` with this interpreter (the uv environment's)."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


class CeleryWorker:
    """One Celery worker process with `concurrency` prefork children."""

    def __init__(self, concurrency: int, log_path: Path) -> None:
        self.concurrency = concurrency
        self.log_path = log_path
        self.nodename = f"bench-{concurrency}-{os.getpid()}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            celery_command(
                "worker",
                "--concurrency",
                str(self.concurrency),
                "--pool",
                "prefork",
                "--loglevel",
                "warning",
                "--hostname",
                self.nodename,
            ),
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _running.add(self)

    async def wait_ready(self, within: float) -> float:
        """Poll `celery inspect ping -d <node>` until the worker answers; returns the seconds it
        took. Raises BenchError when the worker exits or does not answer within `within` seconds."""
        started = time.perf_counter()
        deadline = started + within
        while time.perf_counter() < deadline:
            self._raise_if_exited()
            if await self._ping(deadline):
                return time.perf_counter() - started
            await asyncio.sleep(0.5)
        self._raise_if_exited()
        raise BenchError(
            f"worker {self.nodename} did not answer a ping within {within:g} s (log: {self.log_path})"
        )

    async def _ping(self, deadline: float) -> bool:
        remaining = max(1.0, deadline - time.perf_counter())
        proc = await asyncio.create_subprocess_exec(
            *celery_command("inspect", "ping", "--destination", self.nodename, "--timeout", "1"),
            cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout=min(remaining, 30.0))
        except TimeoutError:
            return False
        finally:
            if proc.returncode is None:  # timed out or cancelled: end the ping we started
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode == 0 and b"pong" in output

    def _raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(
                f"worker {self.nodename} exited with code {self.process.returncode}: {self.log_tail()}"
            )

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    async def stop(self) -> int | None:
        """SIGTERM, wait up to STOP_GRACE_SECONDS, then SIGKILL the process group. Returns the
        exit code (None when the worker never started).

        The worker is reaped only after its group has been swept, so the group id cannot have been
        reused by an unrelated process when SIGKILL is sent to it.
        """
        process = self.process
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                if not await _exited(process.pid, STOP_GRACE_SECONDS):
                    _kill_group(process.pid)
                    await _exited(process.pid, 5.0)
                # prefork children that outlived their parent are in the same process group
                _kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, 5.0)
            return process.returncode
        finally:
            self._forget()

    def stop_now(self) -> None:
        """`stop` without an event loop (blocking), for an interrupted run."""
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                if not wait_child_exit(process.pid, STOP_GRACE_SECONDS):
                    _kill_group(process.pid)
                    wait_child_exit(process.pid, 5.0)
                _kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5.0)
        finally:
            self._forget()

    def _forget(self) -> None:
        _running.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all_now() -> None:
    """Stop every worker this process started and has not stopped yet (blocking)."""
    for worker in list(_running):
        worker.stop_now()


def child_exited(pid: int) -> bool:
    """Whether the child `pid` has exited; it stays unreaped (WNOWAIT) and WNOHANG never blocks."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_child_exit(pid: int, within: float) -> bool:
    """Whether the child `pid` exits within `within` seconds (blocking), without reaping it."""
    deadline = time.perf_counter() + within
    while not child_exited(pid):
        if time.perf_counter() >= deadline:
            return False
        time.sleep(0.1)
    return True


async def _exited(pid: int, within: float) -> bool:
    """Whether the child `pid` exits within `within` seconds, without reaping it."""
    deadline = time.perf_counter() + within
    while not child_exited(pid):
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
