"""`core.config.Settings` (CONTRACT.md, "Runtime") and the shared field types of `core.types`."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from core.config import Settings
from core.types import Id, Money, Quantity, money

pytestmark = pytest.mark.pure

PG = "postgresql+psycopg://user:pass@db.example:5432/orderflow"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No orderflow variables from the test run's environment, and no `.env` file in reach."""
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# --- Settings ---------------------------------------------------------------------------------------


def test_embedded_default_uses_a_sqlite_file_under_data_dir(clean_env, tmp_path):
    cfg = Settings(data_dir=tmp_path / "data")
    assert cfg.database_url is None and cfg.redis_url is None
    assert cfg.embedded is True
    path = (tmp_path / "data" / "orderflow.sqlite3").resolve()
    assert cfg.sqlite_path == path
    assert cfg.sync_database_url == f"sqlite:///{path}"
    assert cfg.async_database_url == f"sqlite+aiosqlite:///{path}"
    assert cfg.broker_url == "memory://"


def test_relative_data_dir_is_resolved(clean_env, tmp_path):
    cfg = Settings(data_dir=Path("./var"))
    assert cfg.sqlite_path.is_absolute()
    assert cfg.sqlite_path == (tmp_path / "var" / "orderflow.sqlite3").resolve()


def test_postgres_urls(clean_env):
    cfg = Settings(database_url=PG, redis_url="redis://cache:6379/0")
    assert cfg.embedded is False
    assert cfg.sync_database_url == PG
    assert cfg.async_database_url == PG
    assert cfg.broker_url == "redis://cache:6379/0"


@pytest.mark.parametrize(
    ("database_url", "redis_url"), [(PG, None), (None, "redis://cache:6379/0")], ids=["db-only", "redis-only"]
)
def test_embedded_only_when_both_are_unset(clean_env, database_url, redis_url):
    assert Settings(database_url=database_url, redis_url=redis_url).embedded is False


def test_values_come_from_the_environment(clean_env):
    clean_env.setenv("DATABASE_URL", PG)
    clean_env.setenv("REDIS_URL", "redis://cache:6379/2")
    clean_env.setenv("ORDER_WAIT_SECONDS", "2.5")
    cfg = Settings()
    assert cfg.database_url == PG
    assert cfg.redis_url == "redis://cache:6379/2"
    assert cfg.order_wait_seconds == 2.5
    assert cfg.embedded is False


def test_blank_env_strings_are_unset(clean_env):
    clean_env.setenv("DATABASE_URL", "")
    clean_env.setenv("REDIS_URL", "   ")
    clean_env.setenv("JWT_SECRET_KEY", "\t")
    cfg = Settings()
    assert cfg.database_url is None
    assert cfg.redis_url is None
    assert cfg.jwt_secret_key is None
    assert cfg.embedded is True
    assert cfg.sync_database_url.startswith("sqlite:///")


def test_dotenv_file_is_read(clean_env, tmp_path):
    (tmp_path / ".env").write_text(f"DATABASE_URL={PG}\nREDIS_URL=\n")
    cfg = Settings()
    assert cfg.database_url == PG
    assert cfg.redis_url is None


def test_contract_defaults(clean_env):
    cfg = Settings()
    assert cfg.jwt_expires_seconds == 1800
    assert cfg.store_rate_limit == "100/hour"
    assert cfg.order_wait_seconds == 10
    assert cfg.order_sweep_after_seconds == 30


def test_jwt_secret_is_random_per_process_without_a_key(clean_env):
    a, b = Settings(), Settings()
    assert len(a.effective_jwt_secret) >= 32
    assert a.effective_jwt_secret == a.effective_jwt_secret  # stable within one settings object
    assert a.effective_jwt_secret != b.effective_jwt_secret
    assert Settings(jwt_secret_key="k" * 40).effective_jwt_secret == "k" * 40


@pytest.mark.parametrize(
    "env",
    [{"ORDER_WAIT_SECONDS": "-1"}, {"JWT_EXPIRES_SECONDS": "10"}, {"DB_POOL_SIZE": "0"}],
)
def test_out_of_range_settings_are_refused(clean_env, env):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


# --- money and field types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (15.99, "15.99"),
        ("15.99", "15.99"),
        (3, "3.00"),
        (0.1 + 0.2, "0.30"),  # a float's noise does not leak into the amount
        (Decimal("2.5"), "2.50"),
        ("15.994", "15.99"),
        ("15.996", "16.00"),
        (1e-9, "0.00"),
        (Decimal("9999999999.99"), "9999999999.99"),
    ],
)
def test_money_rounds_to_cents(value, expected):
    result = money(value)
    assert isinstance(result, Decimal)
    assert result == Decimal(expected)
    assert result.as_tuple().exponent == -2
    assert str(result) == expected


class Priced(BaseModel):
    price: Money
    quantity: Quantity = 1
    id: Id = 1


def test_money_field_serializes_as_a_json_number():
    item = Priced(price="15.99")
    assert item.price == Decimal("15.99")
    assert json.loads(item.model_dump_json())["price"] == 15.99
    assert '"price":15.99' in item.model_dump_json()
    assert item.model_dump()["price"] == Decimal("15.99")  # Python mode keeps the Decimal


@pytest.mark.parametrize(
    "fields",
    [
        {"price": "15.999"},
        {"price": -1},
        {"price": "NaN"},
        {"price": "1e12"},
        {"price": 1, "quantity": 0},
        {"price": 1, "quantity": 1_000_001},
        {"price": 1, "id": 0},
        {"price": 1, "id": 2**31},
    ],
)
def test_field_types_refuse_out_of_range(fields):
    with pytest.raises(ValidationError):
        Priced(**fields)


def test_field_type_bounds_are_inclusive():
    item = Priced(price=0, quantity=1_000_000, id=2**31 - 1)
    assert (item.price, item.quantity, item.id) == (Decimal("0"), 1_000_000, 2**31 - 1)
