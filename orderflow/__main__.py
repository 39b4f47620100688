"""`python -m orderflow`: the `orderflow` command (`orderflow.cli`) without the installed script."""

from __future__ import annotations

from orderflow.cli import app

if __name__ == "__main__":
    app()
