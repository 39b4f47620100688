"""`orderflow demo` and the CLI's guard rails."""

from __future__ import annotations

from sqlalchemy import func, select
from typer.testing import CliRunner

from core.cli import app
from core.demo import load_demo_catalog
from core.products.models import Product, StockMovement


def test_demo_catalog_is_loaded_through_the_ledger(db):
    assert len(load_demo_catalog(25)) == 25
    assert db.execute(select(func.count()).select_from(Product)).scalar_one() == 25
    stock = db.execute(select(func.sum(Product.stock))).scalar_one()
    ledger = db.execute(select(func.sum(StockMovement.delta))).scalar_one()
    assert stock == ledger


def test_cli_lists_its_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "beat", "migrate", "create-user", "demo", "bench"):
        assert command in result.output


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
