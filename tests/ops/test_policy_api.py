"""The risk policy over the API: explain, tenant rules (audited, relaxations flagged), and
production servers raising the class of what runs on them."""

from __future__ import annotations

from tests.auth.helpers import API, audit_events, member_headers
from tests.execution.conftest import StartHosts
from tests.ops.conftest import Ops

RULES = f"{API}/policy/rules"
EXPLAIN = f"{API}/policy/explain"


async def test_explain_names_the_deciding_rule_per_part(ops: Ops) -> None:
    response = await ops.client.post(
        EXPLAIN, json={"command": "df -h; systemctl restart nginx"}, headers=ops.alice
    )
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["risk"] == "high"
    assert [p["risk"] for p in verdict["parts"]] == ["read_only", "high"]
    assert all(p["rule"] and p["reason"] for p in verdict["parts"])
    prod = await ops.client.post(
        EXPLAIN, json={"command": "mkdir /srv/new", "env": "prod"}, headers=ops.alice
    )
    assert prod.json()["risk"] == "high"
    bad = await ops.client.post(EXPLAIN, json={"command": ""}, headers=ops.alice)
    assert bad.status_code == 422


async def test_tenant_rules_need_policy_write_and_are_audited(
    ops: Ops, sshd_hosts: StartHosts
) -> None:
    rule = {"command": "myctl", "subcommand": "status", "risk": "read_only", "reason": "our tool"}
    denied = await ops.client.post(RULES, json=rule, headers=ops.alice)  # operator
    assert denied.status_code == 403
    before = await ops.client.post(EXPLAIN, json={"command": "myctl status"}, headers=ops.alice)
    assert before.json()["risk"] == "unknown"
    created = await ops.client.post(RULES, json=rule, headers=ops.admin)
    assert created.status_code == 201, created.text
    assert created.json()["relaxes"] is True  # unknown -> read_only lowers the class
    after = await ops.client.post(EXPLAIN, json={"command": "myctl status"}, headers=ops.alice)
    assert after.json()["risk"] == "read_only"
    assert after.json()["parts"][0]["rule"].startswith("tenant:")
    still = await ops.client.post(EXPLAIN, json={"command": "myctl stop"}, headers=ops.alice)
    assert still.json()["risk"] == "unknown"
    # the tenant's rule applies to tasks: it runs at once now
    await ops.add_hosts(sshd_hosts, 1)
    task = await ops.submit(targets="web-1", command="myctl status")
    assert task["status"] == "running"
    events = await audit_events(ops.client, ops.admin, "policy.rule.relaxed")
    assert events[0]["summary"]["rule"]["command"] == "myctl"
    listed = (await ops.client.get(RULES, headers=ops.alice)).json()
    assert [r["command"] for r in listed] == ["myctl"]
    removed = await ops.client.delete(f"{RULES}/{created.json()['id']}", headers=ops.admin)
    assert removed.status_code == 204
    gone = await ops.client.post(EXPLAIN, json={"command": "myctl status"}, headers=ops.alice)
    assert gone.json()["risk"] == "unknown"
    assert await audit_events(ops.client, ops.admin, "policy.rule.removed")


async def test_tightening_rule_is_not_a_relaxation(ops: Ops) -> None:
    rule = {"command": "cat", "risk": "high", "reason": "nobody reads files here"}
    created = await ops.client.post(RULES, json=rule, headers=ops.admin)
    assert created.status_code == 201
    assert created.json()["relaxes"] is False
    assert await audit_events(ops.client, ops.admin, "policy.rule.added")
    verdict = await ops.client.post(EXPLAIN, json={"command": "cat /etc/hosts"}, headers=ops.alice)
    assert verdict.json()["risk"] == "high"


async def test_invalid_rules_are_422(ops: Ops) -> None:
    for rule in (
        {"command": "x", "risk": "harmless", "reason": "r"},
        {"command": "x", "risk": "low"},
        {"command": "x", "risk": "low", "reason": "r", "args_match": "("},
        {"command": "x", "risk": "low", "reason": "r", "extra": 1},
    ):
        response = await ops.client.post(RULES, json=rule, headers=ops.admin)
        assert response.status_code == 422, (rule, response.text)


async def test_prod_servers_raise_the_class(ops: Ops, sshd_hosts: StartHosts) -> None:
    await ops.add_hosts(sshd_hosts, 1, prefix="dev")
    await ops.add_hosts(sshd_hosts, 1, prefix="prod", environment="prod")
    dev = await ops.submit(targets="dev-1", command="mkdir -p /tmp/it0-x", reason="r")
    assert dev["risk"] == "low"
    prod = await ops.submit(targets="prod-1", command="mkdir -p /tmp/it0-x", reason="r")
    assert prod["risk"] == "high"
    both = await ops.submit(targets="dev-1,prod-1", command="mkdir -p /tmp/it0-x", reason="r")
    assert both["risk"] == "high"
    read = await ops.submit(targets="prod-1", command="df -h")
    assert read["risk"] == "read_only"
    viewer = await member_headers(ops.client, ops.admin, "vic", role="viewer")
    assert (await ops.client.post(EXPLAIN, json={"command": "ls"}, headers=viewer)).is_success
