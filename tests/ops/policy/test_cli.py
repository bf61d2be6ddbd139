"""``it0 policy explain``: JSON for programs, a table for people, exit code 0 for both."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from it0.cli import policy

WIDE = {"COLUMNS": "250", "NO_COLOR": "1"}


def test_json_is_exactly_one_object_on_stdout() -> None:
    result = CliRunner().invoke(policy.app, ["explain", "--json", "ls | sudo bash -c 'rm -rf /'"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["risk"] == "critical"
    assert body["command"] == "ls | sudo bash -c 'rm -rf /'"
    assert [p["via"] for p in body["parts"]] == [[], ["sudo", "bash -c"]]
    assert result.stderr == ""


def test_json_with_env_reports_the_raise() -> None:
    result = CliRunner().invoke(policy.app, ["explain", "touch /tmp/x", "--env", "prod", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["risk"], body["env"], body["raised"]) == ("high", "prod", True)


def test_human_output_shows_class_and_parts() -> None:
    line = "uptime; ssh web-1 'sudo systemctl restart nginx'"
    result = CliRunner().invoke(policy.app, ["explain", line, "--env", "prod"], env=WIDE)
    assert result.exit_code == 0, result.output
    first, *rest = result.stdout.splitlines()
    assert first == "critical (raised one level for prod): needs approval"
    table = "\n".join(rest)
    assert "builtin:systemctl/restart" in table
    assert "ssh > sudo" in table
    assert "builtin:uptime" in table


def test_human_output_prints_markup_literally() -> None:
    result = CliRunner().invoke(policy.app, ["explain", "echo '[red]x[/red]'"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("read_only: runs without approval")
    assert "[red]x[/red]" in result.stdout


def test_explain_stays_a_subcommand_when_mounted() -> None:
    root = typer.Typer()
    root.add_typer(policy.app, name="policy")
    result = CliRunner().invoke(root, ["policy", "explain", "--json", "df -h"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["risk"] == "read_only"
