"""The `orderflow` command (typer): serve, worker, beat, migrate, create-user, demo, bench.

The composition root: it names the API (`api.main:app`) and the Celery app (`workers.celery_app`) and
calls into `core`; `bench` is imported only inside the `bench` command, so the running service never
loads it. Run as the installed `orderflow` script or as `python -m orderflow`."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from core.config import settings

app = typer.Typer(help="orderflow: queue-backed order processing.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest revision (alembic upgrade head)."""
    from core.migrate import upgrade

    upgrade()
    console.print("[green]schema is at head[/]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="API processes (needs REDIS_URL when > 1)")] = 1,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate")] = True,
) -> None:
    """Run the API (and, on the embedded default, an in-process worker). Migrates first."""
    import uvicorn

    from core.users.service import settings_problems

    problems = settings_problems(settings)
    if problems:
        console.print(f"[red]refusing to start[/]: {'; '.join(problems)}")
        raise typer.Exit(2)
    if migrate_first:
        migrate()
    if workers > 1:
        _require_redis("--workers > 1 needs REDIS_URL (the in-memory broker is per process)")
    if settings.embedded:
        console.print(f"[yellow]embedded default[/]: SQLite at {settings.sqlite_path}, in-process worker")
    uvicorn.run(
        "api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=True,
        timeout_keep_alive=settings.http_keep_alive_seconds,
    )


def _require_redis(refusal: str) -> None:
    """Exit 2 with `refusal` when REDIS_URL is not set: the embedded default's broker and worker live
    in one process, so a second process (API, worker or beat) could not reach them."""
    if settings.redis_url is None:
        console.print(f"[red]{refusal}[/]")
        raise typer.Exit(2)


def _exec_celery(command: str, args: list[str]) -> None:
    """Replace this process with `celery -A workers.celery_app <command> --loglevel LOG_LEVEL <args>`."""
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    os.execv(sys.executable, [*celery, command, "--loglevel", settings.log_level, *args])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`, e.g. --concurrency 4)."""
    _require_redis("a separate worker needs REDIS_URL (and DATABASE_URL)")
    _exec_celery("worker", ctx.args)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def beat(ctx: typer.Context) -> None:
    """Run Celery beat (the periodic outbox sweep)."""
    _require_redis("beat needs REDIS_URL; the embedded default sweeps in-process")
    _exec_celery("beat", ctx.args)


@app.command("create-user")
def create_user(
    username: Annotated[str, typer.Argument(help="3-50 characters: letters, digits, '_', '.', '-'")],
    role: Annotated[str, typer.Option(help="admin | manager | customer")] = "customer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    exists_ok: Annotated[bool, typer.Option("--exists-ok", help="Exit 0 if the username exists")] = False,
) -> None:
    """Create a user (e.g. the first admin) unless the username exists, in any case. The password is
    asked twice at a prompt, or read from stdin with --password-stdin; exit 1 if the user exists
    (0 with --exists-ok), 2 for an invalid name, role or password."""
    from core.db import session_scope
    from core.users import service
    from core.users.models import Role
    from core.users.schemas import check_password, check_username
    from core.users.security import hash_password

    if role.lower() not in {r.value for r in Role}:
        console.print(f"[red]Unknown role {role!r}: use admin, manager or customer.[/]")
        raise typer.Exit(2)
    wanted = Role(role.lower())
    try:
        check_username(username)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        check_password(password)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    migrate()
    with session_scope() as session:
        created = service.ensure_user(
            session, username, hash_password(password, settings.bcrypt_rounds), wanted
        )
    if created:
        console.print(f"[green]{wanted.value} {username!r} created[/]")
        return
    console.print(f"[yellow]a user named {username!r} already exists; nothing changed[/]")
    raise typer.Exit(0 if exists_ok else 1)


@app.command()
def demo(
    products: Annotated[int, typer.Option(help="How many products to create", min=1)] = 300,
) -> None:
    """Load a demo catalogue (one transaction) and print commands to try it, one per line."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from core.demo import load_demo_catalog

    migrate()
    started = time.monotonic()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("loading demo products", total=products)

    def on_progress(done: int, total: int) -> None:
        # The bar appears only when the load takes longer than half a second.
        if not progress.live.is_started and time.monotonic() - started > 0.5:
            progress.start()
        progress.update(task, completed=done)

    try:
        ids = load_demo_catalog(products, on_progress=on_progress)
    finally:
        progress.stop()
    console.print(
        f"[green]{len(ids)} demo products loaded[/] (ids {ids[0]}-{ids[-1]}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    for line in demo_hints(ids[0]):
        # soft_wrap: a command is never broken across lines, whatever the terminal's width.
        hints.print(line, soft_wrap=True, markup=False, highlight=False)


#: The Quick start admin of README.md; the hints use its credentials.
QUICK_START_ADMIN = ("admin", "choose-a-long-password")
hints = Console(soft_wrap=True)


def demo_hints(product_id: int, base_url: str = "localhost:8000") -> list[str]:
    """What `orderflow demo` prints after loading: runnable lines (one command per line) that use the
    Quick start admin of README.md and the first demo product."""
    user, password = QUICK_START_ADMIN
    auth = f"-u {user}:'{password}'"
    return [
        "Next, start the API as in README.md's Quick start (same directory, same settings):",
        f"  FIRST_ADMIN_USERNAME={user} FIRST_ADMIN_PASSWORD='{password}' uv run orderflow serve",
        "then, in another terminal:",
        f"  curl -s {auth} '{base_url}/products?limit=5'",
        f"  ORDER=$(curl -s {auth} -X POST {base_url}/orders -H 'content-type: application/json' "
        f"""-d '{{"product_id": {product_id}, "quantity": 2}}' | jq .id)""",
        f'  curl -s {auth} "{base_url}/orders/$ORDER?wait=5"',
        f"Swagger UI: http://{base_url}/docs (Authorize: basicAuth with the same user and password)",
    ]


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],  # --help goes to the benchmark's own parser
    }
)
def bench(ctx: typer.Context) -> None:
    """Run the load benchmark against a running API (see `orderflow bench --help`)."""
    from bench.cli import main

    raise typer.Exit(main(list(ctx.args)))
