"""README.md's walk-throughs work as written (README.md, "Quick start", "A walk through with curl",
"Authentication", "Store API").

The test starts the server with the Quick start command as the README writes it (on a spare port, in a
data directory of its own), then runs every shell block marked `<!-- readme-test -->`, in README order,
in one bash process (blocks use the variables earlier ones set) with `localhost:8000` pointed at that
port. The answer of each block is compared with the `text` block that follows it in the README: the
same status codes, every header the README shows, the same JSON values (ids included: the README's
outputs come from a fresh server) except request ids, timestamps and tokens, and the same bare numbers
(`-w '%{http_code}'`).

`README_RECORD=path` writes what each block printed to that file, to refresh the README's outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.live_server import embedded_env, free_port, live_server

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- readme-test -->"
#: Fields whose values change from run to run: request ids, timestamps, tokens.
VOLATILE_FIELDS = {"request_id", "created_at", "updated_at", "at", "access_token", "password_changed_at"}
VOLATILE_HEADERS = {"date", "x-request-id", "ratelimit-reset", "content-length", "server"}
SEPARATOR = "@@readme-block@@"


def marked_blocks(text: str) -> list[tuple[str, str | None]]:
    """`(shell, expected)` for each fenced `sh` block right after the marker; `expected` is the
    `text` block that follows it before any prose, or None."""
    fence = re.compile(r"```(\w*)\n(.*?)```", re.S)
    blocks = []
    for match in re.finditer(re.escape(MARKER) + r"\s*```sh\n(.*?)```", text, re.S):
        after = text[match.end() :]
        following = fence.match(after.lstrip("\n"))
        expected = following.group(2) if following and following.group(1) == "text" else None
        blocks.append((match.group(1), expected))
    return blocks


def quick_start_serve_command(text: str) -> str:
    section = text[text.index("## Quick start") :]
    return next(line for line in section.splitlines() if "uv run orderflow serve" in line).strip()


def _mask(value: object) -> object:
    if isinstance(value, dict):
        return {k: "*" if k in VOLATILE_FIELDS else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def answers(output: str) -> dict[str, list]:
    """The status codes, headers (per response, by its index), JSON values and bare numbers."""
    found: dict[str, list] = {"status": [], "headers": [], "json": [], "numbers": []}
    decoder = json.JSONDecoder()
    lines = output.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        status = re.match(r"HTTP/[\d.]+ (\d{3})", line)
        if status:
            found["status"].append(int(status.group(1)))
            found["headers"].append({})
            i += 1
            while i < len(lines) and lines[i].strip():
                name, _, value = lines[i].partition(":")
                if name.lower() not in VOLATILE_HEADERS:
                    found["headers"][-1][name.strip().lower()] = value.strip()
                i += 1
            continue
        rest = line
        while rest:
            if rest[0] in "{[":
                try:
                    value, end = decoder.raw_decode(rest)
                except json.JSONDecodeError:
                    # A JSON value spread over several lines (the README re-indents them).
                    joined = "\n".join([rest, *lines[i + 1 :]])
                    value, end = decoder.raw_decode(joined)
                    consumed = joined[:end].count("\n")
                    i += consumed
                    rest = lines[i].strip()[len(lines[i].strip()) - len(joined[end:].split("\n")[0]) :]
                    found["json"].append(_mask(value))
                    rest = rest.strip()
                    continue
                found["json"].append(_mask(value))
                rest = rest[end:].strip()
            else:
                word, _, rest = rest.partition(" ")
                if word.isdigit():
                    found["numbers"].append(int(word))
                rest = rest.strip()
        i += 1
    return found


def test_the_readme_walk_throughs_run_as_written(tmp_path: Path):
    text = README.read_text()
    blocks = marked_blocks(text)
    assert len(blocks) >= 15, "the README lost its marked walk-through blocks"
    port = free_port()
    serve = quick_start_serve_command(text)
    assert serve.endswith("uv run orderflow serve"), serve
    # The Quick start command as written; only `uv run orderflow` becomes this interpreter's CLI.
    command = [
        "bash",
        "-c",
        f'exec env {serve.replace("uv run orderflow", f"{sys.executable} -m orderflow")} "$@"',
        "serve",
    ]
    env = embedded_env(tmp_path)
    env.pop("BCRYPT_ROUNDS", None)  # the default cost, as a user gets it
    with live_server(tmp_path, command=command, env=env, port=port):
        script = "\n".join(
            f"echo {SEPARATOR}\n{shell.replace('localhost:8000', f'localhost:{port}')}" for shell, _ in blocks
        )
        workdir = tmp_path / "shell"
        workdir.mkdir()
        ran = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=180,
            cwd=workdir,
            env={"PATH": os.environ["PATH"], "HOME": str(workdir), "LANG": "C.UTF-8"},
            check=False,
        )
    outputs = ran.stdout.split(SEPARATOR + "\n")[1:]
    if os.environ.get("README_RECORD"):
        Path(os.environ["README_RECORD"]).write_text(
            "\n".join(
                f"===== block {n}\n{shell}\n----- output\n{out}"
                for n, ((shell, _), out) in enumerate(zip(blocks, outputs, strict=True))
            )
        )
    assert len(outputs) == len(blocks), ran.stdout
    compared = 0
    for n, ((shell, expected), output) in enumerate(zip(blocks, outputs, strict=True)):
        got = answers(output)
        assert "error" not in output.lower() or got["json"] or got["status"], (n, shell, output)
        if expected is None:
            assert output.strip(), (n, shell)
            continue
        want = answers(expected)
        where = f"README block {n}:\n{shell}\n--- printed:\n{output}"
        assert got["status"] == want["status"], where
        assert got["json"] == want["json"], where
        assert got["numbers"] == want["numbers"], where
        for shown, actual in zip(want["headers"], got["headers"], strict=True):
            assert {k: actual.get(k) for k in shown} == shown, where
        compared += 1
    assert compared >= 14
