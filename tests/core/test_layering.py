"""`core` is the domain and imports nothing above it (STYLE.md, "The shape"): loading every module of
`core` loads none of `api`, `workers`, `bench` or the `orderflow` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.pure

PROBE = """
import importlib, pkgutil, sys
import core
for module in pkgutil.walk_packages(core.__path__, "core."):
    importlib.import_module(module.name)
print(len([m for m in sys.modules if m.startswith("core.")]))
print(sorted({m.split(".")[0] for m in sys.modules} & {"api", "workers", "bench", "orderflow"}))
"""


def test_importing_all_of_core_loads_nothing_above_it():
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    count, above = run.stdout.split("\n")[:2]
    assert int(count) > 20  # the walk did import the domain's modules
    assert above == "[]"
