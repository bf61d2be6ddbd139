"""The runbook library over the API: built-in plus the tenant's own, searched, audited, and
never holding a diagnostic that would change a machine."""

from __future__ import annotations

from typing import Any

from it0.agent.runbooks import load_builtin
from tests.auth.helpers import API, audit_events
from tests.ops.conftest import Ops

RUNBOOKS = f"{API}/runbooks"


def _runbook(runbook_id: str = "queue-stuck", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": runbook_id,
        "title": "Message queue stuck",
        "summary": "Consumers stopped taking messages from the broker queue.",
        "symptoms": ["messages pile up in the broker queue", "consumers stopped"],
        "keywords": ["rabbitmq", "broker", "queue"],
        "parameters": {"service": {"description": "The consumer.", "example": "worker"}},
        "diagnostics": [
            {"name": "Status", "command": "systemctl status {service}", "explain": "State."}
        ],
        "remediations": [
            {
                "name": "Restart",
                "command": "systemctl restart {service}",
                "risk_note": "Messages in flight are redelivered.",
                "when": "The consumer hangs.",
            }
        ],
        "verify": [{"name": "Active", "command": "systemctl is-active {service}", "explain": "ok"}],
    }
    data.update(changes)
    return data


async def _ids(ops: Ops, **params: str) -> list[tuple[str, str]]:
    response = await ops.client.get(RUNBOOKS, params=params, headers=ops.alice)
    assert response.status_code == 200, response.text
    return [(item["id"], item["source"]) for item in response.json()]


async def test_lists_the_builtin_runbooks_and_searches_them(ops: Ops) -> None:
    listed = await _ids(ops)
    assert len(listed) == 14
    assert listed == [(r.id, "builtin") for r in load_builtin()]
    found = await _ids(ops, q="disk is full")
    assert found[0] == ("disk-full", "builtin")
    one = await ops.client.get(f"{RUNBOOKS}/disk-full", headers=ops.alice)
    assert one.status_code == 200, one.text
    assert one.json()["source"] == "builtin"
    assert one.json()["diagnostics"][0]["command"] == "df -hT"


async def test_a_tenant_runbook_needs_policy_write_and_is_listed_searched_and_audited(
    ops: Ops,
) -> None:
    url = f"{RUNBOOKS}/queue-stuck"
    denied = await ops.client.put(url, json=_runbook(), headers=ops.alice)  # operator
    assert denied.status_code == 403
    created = await ops.client.put(url, json=_runbook(), headers=ops.admin)
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "tenant"
    assert created.json()["created_by"] == "admin"
    assert ("queue-stuck", "tenant") in await _ids(ops)
    assert len(await _ids(ops)) == 15
    assert (await _ids(ops, q="messages pile up in the queue"))[0] == ("queue-stuck", "tenant")
    changed = _runbook(title="Broker queue stuck")
    replaced = await ops.client.put(url, json=changed, headers=ops.admin)
    assert replaced.status_code == 200, replaced.text
    shown = await ops.client.get(url, headers=ops.bob)
    assert shown.json()["title"] == "Broker queue stuck"
    added = await audit_events(ops.client, ops.admin, "runbook.added")
    assert added[0]["summary"]["runbook_id"] == "queue-stuck"
    assert await audit_events(ops.client, ops.admin, "runbook.replaced")
    assert (await ops.client.delete(url, headers=ops.alice)).status_code == 403
    removed = await ops.client.delete(url, headers=ops.admin)
    assert removed.status_code == 204
    assert (await ops.client.get(url, headers=ops.alice)).status_code == 404
    assert await audit_events(ops.client, ops.admin, "runbook.removed")


async def test_a_diagnostic_that_changes_a_machine_is_refused(ops: Ops) -> None:
    step = {"name": "Clean up", "command": "rm -rf /tmp/x", "explain": "Frees space."}
    body = _runbook(diagnostics=[step])
    response = await ops.client.put(f"{RUNBOOKS}/queue-stuck", json=body, headers=ops.admin)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "'Clean up'" in error["message"]
    assert error["details"] == {"step": "Clean up", "kind": "diagnostics", "risk": "high"}
    verify = {"name": "Restart", "command": "systemctl restart {service}", "explain": "x"}
    body = _runbook(verify=[verify])
    response = await ops.client.put(f"{RUNBOOKS}/queue-stuck", json=body, headers=ops.admin)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["kind"] == "verify"
    assert ("queue-stuck", "tenant") not in await _ids(ops)
    assert not await audit_events(ops.client, ops.admin, "runbook.added")


async def test_the_body_id_must_be_the_path_id(ops: Ops) -> None:
    response = await ops.client.put(f"{RUNBOOKS}/other", json=_runbook(), headers=ops.admin)
    assert response.status_code == 422, response.text
    assert "'queue-stuck'" in response.json()["error"]["message"]


async def test_an_override_replaces_a_builtin_until_it_is_removed(ops: Ops) -> None:
    url = f"{RUNBOOKS}/disk-full"
    body = _runbook("disk-full", title="Our disk full")
    created = await ops.client.put(url, json=body, headers=ops.admin)
    assert created.status_code == 201, created.text
    listed = await _ids(ops)
    assert len(listed) == 14
    assert ("disk-full", "tenant") in listed
    assert (await ops.client.get(url, headers=ops.alice)).json()["title"] == "Our disk full"
    assert (await audit_events(ops.client, ops.admin, "runbook.added"))[0]["summary"][
        "overrides_builtin"
    ]
    assert (await ops.client.delete(url, headers=ops.admin)).status_code == 204
    back = (await ops.client.get(url, headers=ops.alice)).json()
    builtin = next(r for r in load_builtin() if r.id == "disk-full")
    assert (back["source"], back["title"]) == ("builtin", builtin.title)
    # the built-in one itself cannot be removed
    assert (await ops.client.delete(url, headers=ops.admin)).status_code == 404


async def test_unknown_runbooks_are_404(ops: Ops) -> None:
    assert (await ops.client.get(f"{RUNBOOKS}/nope", headers=ops.alice)).status_code == 404
    assert (await ops.client.delete(f"{RUNBOOKS}/nope", headers=ops.admin)).status_code == 404
