"""A real `orderflow serve` on a spare port, for tests that need a server a browser or curl can reach.

The server runs on the embedded default (no DATABASE_URL, REDIS_URL or JWT_SECRET_KEY; a SQLite file
in a directory of the test's own), the way README's Quick start starts it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

#: What conftest sets for the PostgreSQL/Redis suite and the embedded default must not see.
SUITE_ONLY = {"DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "REDIS_KEY_PREFIX"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SUITE_ONLY}
    env.update({"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", **extra})
    return env


@contextmanager
def live_server(
    data_dir: Path,
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int = 0,
    start_timeout: float = 90,
) -> Iterator[LiveServer]:
    """Start `command` (default: `python -m orderflow serve`) with `--port` appended, wait until
    `/healthz` answers 200 (at most `start_timeout` seconds: imports and migrations take a while on a
    busy 2-core machine), yield, then stop it with SIGTERM."""
    port = port or free_port()
    argv = [*(command or [sys.executable, "-m", "orderflow", "serve"]), "--port", str(port)]
    log_path = data_dir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env=env or embedded_env(data_dir), stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd()
        )
    server = LiveServer(f"http://127.0.0.1:{port}", port, data_dir, log_path, proc)
    try:
        _wait_healthy(server, start_timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_healthy(server: LiveServer, timeout: float) -> None:
    """Poll `/healthz` every 0.1 s until it answers 200; RuntimeError with the server's log if the
    process exits or `timeout` seconds pass. One client for the whole wait: a new `httpx.Client` per
    poll builds a new TLS context each time (about 20 ms of CPU under coverage, for plain HTTP)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.base_url, timeout=1) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(f"orderflow serve exited with {code}:\n{server.log()}")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"orderflow serve did not answer /healthz in {timeout} s:\n{server.log()}")
            time.sleep(0.1)
