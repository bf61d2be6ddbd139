"""``it0 ask`` and ``it0 chat`` against a real ``it0 serve`` on the embedded default.

As a new user meets it: the server started on a fresh data dir with no model configured,
then ``it0 ask "disk is full on localhost"`` with no API key given (the CLI uses the key
the first start wrote into the data dir) diagnoses the control-plane host.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from tests.processes import ANSI, it0_command, it0_env, server_pool

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[int, str]:
    done = subprocess.run(
        it0_command(*args),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, ANSI.sub("", done.stdout + done.stderr)


def test_ask_diagnoses_localhost_with_no_model_and_no_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with server_pool(tmp_path) as start:
        server = start(data)
        key_file = data / "cli.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "cli.key" in server.stderr()
        env = it0_env(data, IT0_URL=server.url, COLUMNS="200")

        code, out = _run(["ask", "disk is full on localhost"], env)
        assert code == 0, out
        assert "No language model is configured" in out
        assert "IT0_AGENT_MODEL" in out
        assert "Runbook: Disk full" in out
        assert "→ run_command on localhost: df -hT" in out
        assert "Filesystem" in out  # real df output from this machine
        assert "tool calls;" in out

        code, out = _run(["ask", "hello there", "--json"], env)
        assert code == 0, out
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert events[0]["event"] == "user"
        assert events[-1]["event"] == "done"
        assert "No runbook matches" in "".join(
            e["data"].get("delta", "") for e in events if e["event"] == "text"
        )

        code, out = _run(["chat"], env, stdin="what is the weather\n/quit\n")
        assert code == 0, out
        assert "you>" in out
        assert "No runbook matches" in out

        bad = dict(env, IT0_API_KEY="it0_default_nonsense")
        code, out = _run(["ask", "disk is full on localhost"], bad)
        assert code == 2
        assert "error 401" in out


def test_an_unknown_model_is_one_clear_line_at_start(tmp_path: Path) -> None:
    env = it0_env(tmp_path / "data", IT0_AGENT_MODEL="gpt-something")
    code, out = _run(["serve", "--port", "1"], env)
    assert code == 2
    assert out.strip() == (
        "error: IT0_AGENT_MODEL: must be offline, anthropic:<model>, openai:<model> "
        "or claude-sdk:<model>"
    )
