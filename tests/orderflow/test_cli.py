"""The `orderflow` command (orderflow/cli.py): its commands, `python -m orderflow`, the guard rails of
`create-user` and `serve`, and the hints `orderflow demo` prints (whole lines that run when pasted)."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from core.config import Settings
from orderflow.cli import app
from tests.live_server import embedded_env, live_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
COMMANDS = ("serve", "worker", "beat", "migrate", "create-user", "demo", "bench")


def test_cli_lists_its_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_python_dash_m_orderflow_is_the_same_command_and_loads_neither_bench_nor_the_api():
    shown = subprocess.run(
        [sys.executable, "-m", "orderflow", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    for command in COMMANDS:
        assert command in shown.stdout
    # bench is imported only inside the `bench` command; the API and the worker only by the commands
    # that start them.
    probe = (
        "import sys, orderflow.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'api', 'workers', 'bench'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_create_user_makes_an_admin_that_can_log_in(db):
    from core.users import service
    from core.users.security import PasswordChecker

    result = CliRunner().invoke(
        app, ["create-user", "Ops.Admin", "--role", "ADMIN", "--password-stdin"], input="s3cret-pass\n"
    )
    assert result.exit_code == 0, result.output
    principal, password_hash = service.credentials_of(db, "ops.admin")
    assert (principal.username, principal.role.value) == ("Ops.Admin", "admin")
    assert PasswordChecker(4).check("s3cret-pass", password_hash)


def test_create_user_is_idempotent_only_when_asked(db):
    runner = CliRunner()
    args = ["create-user", "ops", "--role", "admin", "--password-stdin"]
    assert runner.invoke(app, args, input="first-pass\n").exit_code == 0
    again = runner.invoke(app, ["create-user", "OPS", *args[2:]], input="other-pass\n")
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert runner.invoke(app, [*args, "--exists-ok"], input="other-pass\n").exit_code == 0


def test_create_user_refuses_bad_input_with_exit_2():
    runner = CliRunner()
    cases = [
        (["create-user", "x", "--password-stdin"], "long-enough\n", "3-50 characters"),
        (["create-user", "ok-name", "--role", "root", "--password-stdin"], "long-enough\n", "Unknown role"),
        (["create-user", "ok-name", "--password-stdin"], "short\n", "at least 8 bytes"),
        (["create-user", "ok-name", "--password-stdin"], "é" * 37 + "\n", "72 bytes"),
    ]
    for args, stdin, expected in cases:
        result = runner.invoke(app, args, input=stdin)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output


def test_serve_refuses_a_missing_jwt_secret(monkeypatch):
    from core.config import settings

    monkeypatch.setattr(settings, "jwt_secret_key", None)
    result = CliRunner().invoke(app, ["serve", "--no-migrate"])
    assert result.exit_code == 2
    assert "JWT_SECRET_KEY is not set" in result.output


def test_a_second_process_refuses_to_start_without_redis(monkeypatch):
    """worker, beat and serve --workers 2 exit 2 before starting anything when REDIS_URL is not set
    (the embedded default's broker lives in one process)."""
    from core.config import settings

    monkeypatch.setattr(settings, "redis_url", None)
    cases = [
        (["worker", "--concurrency", "1"], "a separate worker needs REDIS_URL"),
        (["beat"], "beat needs REDIS_URL"),
        (["serve", "--no-migrate", "--workers", "2"], "--workers > 1 needs REDIS_URL"),
    ]
    for args, expected in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output


def _quick_start_serve_command() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    return next(line for line in section.splitlines() if "uv run orderflow serve" in line).strip()


def test_the_printed_hints_are_whole_runnable_lines_with_the_quick_start_admin(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal must not break a command
    result = CliRunner().invoke(app, ["demo", "--products", "300"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    first = int(re.search(r"\(ids (\d+)-\d+\)", result.output).group(1))

    assert _quick_start_serve_command() in lines
    credentials = "-u admin:'choose-a-long-password'"
    expected = [
        f"curl -s {credentials} 'localhost:8000/products?limit=5'",
        f"ORDER=$(curl -s {credentials} -X POST localhost:8000/orders -H 'content-type: application/json'"
        f""" -d '{{"product_id": {first}, "quantity": 2}}' | jq .id)""",
        f'curl -s {credentials} "localhost:8000/orders/$ORDER?wait=5"',
    ]
    for command in expected:
        assert command in lines, (command, lines)
    for command in [_quick_start_serve_command(), *expected]:
        shlex.split(command)  # balanced quotes
        parsed = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, check=False)
        assert parsed.returncode == 0, (command, parsed.stderr)
    assert not any(line.endswith(("\\", "-H", "-d", "|")) for line in lines), lines


def test_serve_keeps_idle_connections_open_for_http_keep_alive_seconds(tmp_path):
    """`orderflow serve` gives uvicorn `HTTP_KEEP_ALIVE_SECONDS`: with 1 s, an idle connection is
    closed by the server after about a second (uvicorn's own default would keep it 5 s)."""
    env = embedded_env(tmp_path, HTTP_KEEP_ALIVE_SECONDS="1")
    with (
        live_server(tmp_path, env=env) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: orderflow.test\r\n\r\n")
        sock.settimeout(4)
        response = b""
        while not response.endswith(b'{"status":"ok"}'):  # head and body may come in two segments
            chunk = sock.recv(4096)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # the server closed the idle connection
        assert 0.5 < time.monotonic() - started < 3


def test_http_keep_alive_outlasts_a_load_balancers_idle_timeout():
    assert Settings().http_keep_alive_seconds > 60
