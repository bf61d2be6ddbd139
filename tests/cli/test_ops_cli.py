"""``it0 tasks``, ``it0 approvals`` and ``it0 orders`` against a real ``it0 serve``.

One server for the module, with the embedded default's ``localhost`` (kind local) as the
target, and three people: admin, and the operators alice and bob, each with an API key.
The CLI runs in-process through typer's runner and talks HTTP to the server process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from it0.cli.approvals import approvals_app
from it0.cli.orders import orders_app
from it0.cli.runbooks import runbooks_app
from it0.cli.tasks import tasks_app
from it0.client import Client, parse_sse
from tests.processes import ANSI, HOST, Server, free_port, it0_command, it0_env, server_pool

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "ops-cli-admin-password"
MEMBER_PASSWORD = "ops-cli-member-password"
FINAL = {"succeeded", "failed", "cancelled", "rejected", "expired", "interrupted"}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

cli = typer.Typer()
cli.add_typer(tasks_app, name="tasks")
cli.add_typer(approvals_app, name="approvals")
cli.add_typer(orders_app, name="orders")
cli.add_typer(runbooks_app, name="runbooks")
runner = CliRunner()


@dataclass(frozen=True)
class Site:
    """The running server and the API keys of its people."""

    server: Server
    keys: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=30)


@dataclass(frozen=True)
class Run:
    """What one CLI call did, with colours stripped."""

    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.stdout.splitlines()]

    def field(self, name: str) -> str | None:
        """The value of a ``name  value`` line of a `show` command."""
        for line in self.lines:
            if line.startswith(f"{name} "):
                return line[len(name) :].strip()
        return None


def _login(http: httpx.Client, username: str, password: str) -> dict[str, str]:
    response = http.post(
        "/api/v1/auth/login",
        json={"tenant": "default", "username": username, "password": password},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _api_key(http: httpx.Client, headers: dict[str, str], name: str) -> str:
    response = http.post("/api/v1/api-keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def _member_key(data_dir: Path, username: str) -> str:
    """An operator may not create API keys, so the key comes from `it0 apikey create`
    on the server's data dir, as whoever runs the machine would do it."""
    done = subprocess.run(
        it0_command("apikey", "create", f"{username} cli", "--user", username),
        env=it0_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("ops-cli")
    with server_pool(work) as start:
        server = start(work / "data", IT0_ADMIN_PASSWORD=ADMIN_PASSWORD)
        with server.client() as http:
            admin = _login(http, "admin", ADMIN_PASSWORD)
            keys = {"admin": _api_key(http, admin, "admin cli")}
            for name in ("alice", "bob"):
                added = http.post(
                    "/api/v1/users",
                    json={"username": name, "password": MEMBER_PASSWORD, "role": "operator"},
                    headers=admin,
                )
                assert added.status_code == 201, added.text
                keys[name] = _member_key(work / "data", name)
        yield Site(server, keys)
        server.stop()
        assert "Traceback" not in server.stderr(), server.stderr()[-3000:]


def it0(site: Site, who: str | None, *args: str) -> Run:
    """Run ``it0 <args>`` as ``who`` (no API key for None), with no IT0_ settings around."""
    options = ["--url", site.url, *(["--key", site.keys[who]] if who else [])]
    result: Result = runner.invoke(
        cli, [*args, *options], env={"IT0_API_KEY": None, "IT0_URL": None, "COLUMNS": "160"}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr))


def _task_id(run: Run) -> str:
    found = re.search(rf"^task ({UUID})", run.stdout, re.MULTILINE)
    assert found, run.stdout
    return found.group(1)


def _approval_id(run: Run) -> str:
    found = re.search(rf"waits for approval ({UUID})", run.stdout)
    assert found, run.stdout
    return found.group(1)


def _wait_status(site: Site, task_id: str, statuses: set[str], limit: float = 30) -> str:
    deadline = time.monotonic() + limit
    with site.api("admin") as api:
        while True:
            status = str(api.get(f"/tasks/{task_id}").json()["status"])
            if status in statuses:
                return status
            assert time.monotonic() < deadline, f"task {task_id} still {status}"
            time.sleep(0.1)


# --- tasks ----------------------------------------------------------------------------------


def test_run_follow_streams_output_and_a_summary(site: Site) -> None:
    run = it0(site, "alice", "tasks", "run", "localhost", "echo hi; echo oops >&2", "--follow")
    assert run.code == 0, run
    assert "localhost | hi" in run.lines
    assert "localhost | oops" in run.lines
    assert re.search(r"risk\s+read_only\s+status\s+running", run.stdout), run.stdout
    summary = run.lines[-1]
    assert summary.startswith(f"task {_task_id(run)[:18]} succeeded"), run.stdout
    assert "1 ok" in summary
    assert re.search(r"localhost\s+.*\s+ok\s+.*\s0\s", run.stdout), run.stdout  # hosts table
    assert run.stderr == ""


def test_a_failing_command_exits_1(site: Site) -> None:
    run = it0(site, "alice", "tasks", "run", "localhost", "ls /no/such/dir", "--follow")
    assert run.code == 1, run
    assert any(line.startswith("localhost | ") and "/no/such/dir" in line for line in run.lines), (
        run.stdout
    )
    assert re.search(r"task \S{18} failed \(1 failed\)", run.stdout), run.stdout


def test_false_exits_1(site: Site) -> None:
    # no --reason: were `false` not read-only, this fails at once instead of waiting
    run = it0(site, "alice", "tasks", "run", "localhost", "false", "--follow")
    assert run.code == 1, run
    assert "failed" in run.lines[-1]


def test_approval_round_trip_with_four_eyes(site: Site, tmp_path: Path) -> None:
    target = tmp_path / "made-by-it0"
    command = f"touch {target}"
    run = it0(site, "alice", "tasks", "run", "localhost", command, "--reason", "r")
    assert run.code == 0, run
    task_id, approval_id = _task_id(run), _approval_id(run)
    assert "status pending_approval" in " ".join(run.stdout.split())
    assert f"it0 approvals approve {approval_id}" in run.stdout
    assert not target.exists()

    listed = it0(site, "bob", "approvals", "list")
    assert listed.code == 0, listed
    row = next((line for line in listed.lines if approval_id[:18] in line), None)
    assert row is not None, listed.stdout
    assert "alice" in row
    assert "0/1" in row

    shown = it0(site, "bob", "approvals", "show", approval_id[:18])
    assert shown.code == 0, shown
    assert command in shown.lines
    assert shown.field("hosts") == "localhost", shown.stdout
    assert shown.field("reason") == "r"
    assert shown.field("requested by") == "alice"
    assert shown.field("approvals") == "0 of 1"
    assert re.fullmatch(r"\S+ \S+ \(in \d+m\)", shown.field("expires") or ""), shown.stdout
    assert "touch" in shown.stdout.split(command, 1)[1]  # the explanation's part

    own = it0(site, "alice", "approvals", "approve", approval_id)
    assert own.code == 2, own
    assert len(own.stderr.strip().splitlines()) == 1, own.stderr
    assert own.stderr.startswith("error 403: the requester cannot approve"), own.stderr
    assert not target.exists()

    voted = it0(site, "bob", "approvals", "approve", approval_id, "--comment", "looks fine")
    assert voted.code == 0, voted
    assert f"approval {approval_id[:18]}: approved (1 of 1 approvals)" in voted.stdout

    logs = it0(site, "alice", "tasks", "logs", task_id, "--follow")
    assert logs.code == 0, logs
    assert f"task {task_id[:18]} succeeded" in logs.stdout
    assert target.exists()

    shown = it0(site, "alice", "tasks", "show", task_id)
    assert shown.code == 0, shown
    assert shown.field("authorized by") == "approval bob", shown.stdout
    assert shown.field("status") == "succeeded"
    assert not it0(site, "bob", "approvals", "list").stdout.count(approval_id[:18])
    every = it0(site, "bob", "approvals", "list", "--all")
    assert any(approval_id[:18] in line and "approved" in line for line in every.lines)


FOLLOWER = (
    "import typer; from it0.cli.tasks import tasks_app; "
    "app = typer.Typer(); app.add_typer(tasks_app, name='tasks'); app()"
)


def test_follow_waits_for_the_approval(site: Site, tmp_path: Path) -> None:
    target = tmp_path / "after-approval"
    command = f"touch {target}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IT0_")}
    options = ["-r", "r", "-f", "--url", site.url, "--key", site.keys["alice"]]
    follower = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, "tasks", "run", "localhost", command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "160"},
    )
    try:
        approval = _pending_approval(site, command)
        with site.api("bob") as api:
            assert api.post(f"/approvals/{approval}/approve").status_code == 200
        stdout, stderr = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, (stdout, stderr)
    assert f"waiting for approval {approval}" in stdout
    assert "succeeded (1 ok)" in stdout
    assert target.exists()


def _pending_approval(site: Site, command: str, limit: float = 30) -> str:
    deadline = time.monotonic() + limit
    with site.api("bob") as api:
        while time.monotonic() < deadline:
            for approval in api.get("/approvals", params={"status": "pending"}).json():
                if approval["steps"][0]["command"] == command:
                    return str(approval["id"])
            time.sleep(0.1)
    pytest.fail(f"no approval request for {command!r}")


def test_reject_ends_the_task(site: Site, tmp_path: Path) -> None:
    run = it0(site, "alice", "tasks", "run", "localhost", f"touch {tmp_path}/x", "-r", "why")
    task_id, approval_id = _task_id(run), _approval_id(run)
    rejected = it0(site, "bob", "approvals", "reject", approval_id, "-m", "no")
    assert rejected.code == 0, rejected
    assert "rejected" in rejected.stdout
    logs = it0(site, "alice", "tasks", "logs", task_id, "--follow")
    assert logs.code == 1, logs
    assert f"task {task_id[:18]} rejected" in logs.stdout
    assert not (tmp_path / "x").exists()


def test_list_json_and_show_output(site: Site) -> None:
    created = it0(site, "bob", "tasks", "run", "localhost", "echo listed", "--json")
    assert created.code == 0, created
    task = json.loads(created.stdout)
    assert task["status"] == "running"  # claimed by the server's worker as it was created
    assert task["servers"] == ["localhost"]
    _wait_status(site, task["id"], FINAL)

    listed = it0(site, "bob", "tasks", "list", "--json", "--limit", "100")
    assert listed.code == 0, listed
    page = json.loads(listed.stdout)
    assert set(page) == {"items", "next_cursor"}
    assert task["id"] in [t["id"] for t in page["items"]]

    table = it0(site, "bob", "tasks", "list", "--status", "succeeded")
    assert any(task["id"][:18] in line and "bob" in line for line in table.lines), table.stdout

    shown = it0(site, "bob", "tasks", "show", task["id"][:18], "--output")
    assert shown.code == 0, shown
    assert "localhost | listed" in shown.lines
    assert shown.field("status") == "succeeded", shown.stdout
    assert shown.field("risk") == "read_only"
    logs = it0(site, "bob", "tasks", "logs", task["id"])
    assert logs.lines == ["localhost | listed"]


def test_follow_with_json_prints_the_final_task(site: Site) -> None:
    run = it0(site, "bob", "tasks", "run", "localhost", "echo j", "--follow", "--json")
    assert run.code == 0, run
    task = json.loads(run.stdout)
    assert task["status"] == "succeeded"
    assert [(h["name"], h["stdout"]) for h in task["hosts"]] == [("localhost", "j\n")]
    assert task["verdicts"][0]["risk"] == "read_only"


def test_retry_runs_the_same_request_again(site: Site) -> None:
    first = it0(site, "alice", "tasks", "run", "localhost", "echo again", "--follow")
    assert first.code == 0, first
    retried = it0(site, "bob", "tasks", "retry", _task_id(first), "--follow")
    assert retried.code == 0, retried
    assert "localhost | again" in retried.lines
    assert _task_id(retried) != _task_id(first)
    with site.api("bob") as api:
        detail = api.get(f"/tasks/{_task_id(retried)}").json()
    assert detail["retry_of"] == _task_id(first)
    assert detail["requested_by"]["name"] == "bob"


def test_cancel_a_running_task(site: Site) -> None:
    run = it0(site, "alice", "tasks", "run", "localhost", "sleep 30", "--reason", "wait")
    assert run.code == 0, run
    task_id = _task_id(run)
    if "waits for approval" in run.stdout:
        assert it0(site, "bob", "approvals", "approve", _approval_id(run)).code == 0
    _wait_status(site, task_id, {"running"})

    cancelled = it0(site, "alice", "tasks", "cancel", task_id)
    assert cancelled.code == 0, cancelled
    assert f"task {task_id} is running; cancel requested" in cancelled.stdout

    logs = it0(site, "alice", "tasks", "logs", task_id, "--follow")
    assert logs.code == 1, logs
    assert f"task {task_id[:18]} cancelled" in logs.stdout
    again = it0(site, "alice", "tasks", "cancel", task_id)
    assert again.code == 2
    assert again.stderr.strip() == "error 409: task is cancelled already"


def test_cancel_before_it_runs(site: Site, tmp_path: Path) -> None:
    run = it0(site, "alice", "tasks", "run", "localhost", f"touch {tmp_path}/y", "-r", "r")
    cancelled = it0(site, "alice", "tasks", "cancel", _task_id(run))
    assert cancelled.code == 0, cancelled
    assert cancelled.stdout.strip() == f"task {_task_id(run)} cancelled"
    status = it0(site, "bob", "approvals", "show", _approval_id(run), "--json")
    assert json.loads(status.stdout)["status"] == "cancelled"


# --- errors ---------------------------------------------------------------------------------


def test_missing_key_is_one_line_and_exit_2(site: Site) -> None:
    run = it0(site, None, "tasks", "list")
    assert run.code == 2
    assert run.stdout == ""
    assert run.stderr.strip().splitlines() == ["error: an API key is needed: --key or IT0_API_KEY"]


def test_unknown_task_is_the_404_message(site: Site) -> None:
    run = it0(site, "bob", "tasks", "show", "00000000-0000-4000-8000-000000000000")
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        "error 404: task 00000000-0000-4000-8000-000000000000 not found"
    ]


def test_a_bad_key_is_401(site: Site) -> None:
    run = runner.invoke(cli, ["approvals", "list", "--url", site.url, "--key", "it0_nonsense"])
    assert run.exit_code == 2
    assert ANSI.sub("", run.stderr).startswith("error 401: ")


def test_validation_errors_name_the_field(site: Site) -> None:
    run = it0(site, "alice", "tasks", "run", "localhost", "touch /tmp/it0-never")
    assert run.code == 2
    assert re.fullmatch(r"error 422: this task is \w+ and needs a reason", run.stderr.strip())
    neither = it0(site, "alice", "tasks", "run", "localhost")
    assert neither.code == 2
    assert "give a COMMAND or --script FILE" in neither.stderr


def test_unreachable_server_is_one_line() -> None:
    url = f"http://{HOST}:{free_port()}"
    run = runner.invoke(cli, ["tasks", "list", "--url", url, "--key", "k"])
    assert run.exit_code == 2
    lines = ANSI.sub("", run.stderr).strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot reach {url}")


# --- standing orders ------------------------------------------------------------------------

ORDER_YAML = """\
name: restart-web
description: restart the web server when it hangs
scope:
  targets: localhost
  max_risk: low
  commands:
    - template: systemctl restart {unit}
      params:
        unit: {type: enum, values: [nginx, caddy]}
rate_limit: {max_runs: 3, window_seconds: 3600}
expires_at: 2099-01-01T00:00:00Z
"""


def test_orders_round_trip(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "order.yaml"
    path.write_text(ORDER_YAML)
    created = it0(site, "alice", "orders", "create", "--file", str(path))
    assert created.code == 0, created
    found = re.search(r"standing order #(\d+) restart-web: pending_approval", created.stdout)
    assert found, created.stdout
    number = found.group(1)
    assert f"it0 orders approve {number}" in created.stdout

    listed = it0(site, "bob", "orders", "list")
    assert any("restart-web" in line and "pending_approval" in line for line in listed.lines)
    as_json = json.loads(it0(site, "bob", "orders", "list", "--json").stdout)
    order = next(o for o in as_json if o["name"] == "restart-web")
    assert order["expires_at"].startswith("2099-01-01T00:00:00")
    assert order["scope"]["commands"][0]["params"]["unit"]["values"] == ["nginx", "caddy"]

    shown = it0(site, "bob", "orders", "show", "restart-web")
    assert shown.code == 0, shown
    assert "systemctl restart {unit}" in shown.stdout
    assert "unit: enum" in shown.stdout
    assert shown.field("owner") == "alice", shown.stdout
    assert shown.field("targets") == "localhost"

    by_operator = it0(site, "bob", "orders", "approve", number)
    assert by_operator.code == 2
    assert by_operator.stderr.startswith("error 403: "), by_operator.stderr
    approved = it0(site, "admin", "orders", "approve", number, "--comment", "ok")
    assert approved.code == 0, approved
    assert f"standing order #{number} restart-web: active" in approved.stdout
    shown = it0(site, "bob", "orders", "show", order["id"])
    assert shown.field("approved by") == "admin", shown.stdout

    paused = it0(site, "alice", "orders", "pause", "restart-web", "-m", "maintenance")
    assert paused.code == 0, paused
    assert "restart-web: paused (maintenance)" in paused.stdout
    resumed = it0(site, "alice", "orders", "resume", number)
    assert resumed.code == 0, resumed
    assert "restart-web: pending_approval" in resumed.stdout


def test_orders_create_rejects_a_bad_file(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text("[1, 2]")
    run = it0(site, "alice", "orders", "create", "--file", str(path))
    assert run.code == 2
    assert "must hold one standing order" in run.stderr
    path.write_text(json.dumps({"name": "x"}))
    run = it0(site, "alice", "orders", "create", "-f", str(path))
    assert run.code == 2
    assert run.stderr.startswith("error 422: invalid value for "), run.stderr


# --- the SSE client -------------------------------------------------------------------------


def test_parse_sse_wire_format() -> None:
    lines = [
        ": ping",
        "event: output",
        "id: 7",
        'data: {"host": "web-1",',
        'data: "text": "a"}',
        "",
        "",  # a blank line alone dispatches nothing
        "event:task",
        "data:not json",
        "",
        "data: 1",
        "unknown: field",
        "",
    ]
    assert list(parse_sse(lines)) == [
        {"event": "output", "id": "7", "data": {"host": "web-1", "text": "a"}},
        {"event": "task", "id": None, "data": "not json"},
        {"event": "message", "id": None, "data": 1},
    ]


class _FlakyEvents(BaseHTTPRequestHandler):
    """The first stream dies mid-body after two events; the next resumes after the id."""

    protocol_version = "HTTP/1.1"
    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Last-Event-ID"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if len(self.seen) == 1:
            body = (
                'event: output\nid: 1\ndata: {"text": "one"}\n\n: ping\n\n'
                'event: output\nid: 2\ndata: {"text": "two"}\n\n'
            )
            self.send_header("Content-Length", "100000")  # promised, never delivered
        else:
            body = (
                'event: output\nid: 3\ndata: {"text": "three"}\n\n'
                'event: done\ndata: {"status": "succeeded"}\n\n'
            )
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_events_reconnect_with_last_event_id() -> None:
    _FlakyEvents.seen = []
    server = ThreadingHTTPServer((HOST, 0), _FlakyEvents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Client(f"http://{HOST}:{server.server_address[1]}", "key") as client:
            events = list(client.events("t", backoff=0))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert [(e["event"], e["id"]) for e in events] == [
        ("output", "1"),
        ("output", "2"),
        ("output", "3"),
        ("done", None),
    ]
    assert _FlakyEvents.seen == [None, "2"]


RUNBOOK_YAML = """\
id: queue-backlog
title: Job queue backlog
summary: Jobs pile up in the worker queue.
symptoms: [queue backlog growing, jobs stuck in queue]
keywords: [queue, backlog, worker]
diagnostics:
  - name: Worker service
    command: systemctl status app-worker
    explain: Is the worker running?
  - name: Recent errors
    command: journalctl -u app-worker -n 100
    explain: Errors that stop jobs.
remediations:
  - name: Restart the worker
    command: systemctl restart app-worker
    risk_note: Jobs in flight are retried.
    when: The worker is stuck.
verify:
  - name: Worker again
    command: systemctl is-active app-worker
    explain: active
"""


def test_runbooks_list_search_add_show_rm(site: Site, tmp_path: Path) -> None:
    listed = json.loads(it0(site, "bob", "runbooks", "list", "--json").stdout)
    assert {"disk-full", "service-down"} <= {r["id"] for r in listed}
    found = it0(site, "bob", "runbooks", "list", "--query", "the disk is full on web-1")
    assert found.code == 0, found
    rows = [line.strip("│ ") for line in found.lines if "builtin" in line]
    assert rows[0].startswith("disk-full "), found.stdout
    path = tmp_path / "queue.yaml"
    path.write_text(RUNBOOK_YAML)
    denied = it0(site, "alice", "runbooks", "add", str(path))  # operators lack policy:write
    assert denied.code == 2
    assert denied.stderr.startswith("error 403:"), denied.stderr
    added = it0(site, "admin", "runbooks", "add", str(path))
    assert added.code == 0, added
    shown = it0(site, "bob", "runbooks", "show", "queue-backlog")
    assert shown.code == 0, shown
    assert "systemctl status app-worker" in shown.stdout
    searched = json.loads(
        it0(site, "bob", "runbooks", "list", "-q", "jobs stuck in queue", "--json").stdout
    )
    assert searched[0]["id"] == "queue-backlog"
    assert searched[0]["source"] == "tenant"
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text(RUNBOOK_YAML.replace("journalctl -u app-worker -n 100", "rm -rf /tmp/q"))
    refused = it0(site, "admin", "runbooks", "add", str(unsafe))
    assert refused.code == 2
    assert refused.stderr.startswith("error 422:"), refused.stderr
    removed = it0(site, "admin", "runbooks", "rm", "queue-backlog")
    assert removed.code == 0, removed
    assert it0(site, "bob", "runbooks", "show", "queue-backlog").code == 2
