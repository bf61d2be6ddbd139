"""Ansible inventories: parsing INI and YAML, the mapping to servers, idempotent imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from it0.audit import Actor, AuditContext
from it0.inventory.errors import InventoryFileError
from it0.inventory.importer import (
    ImportReport,
    InventoryHost,
    expand_pattern,
    import_inventory,
    map_host,
    parse_ini,
    parse_inventory,
    parse_yaml,
)
from it0.inventory.service import TenantRecorder
from it0.platform import Platform
from tests.audit.helpers import run_cli
from tests.auth.helpers import API, audit_events
from tests.inventory.test_selectors import recorder
from tests.inventory.test_servers import SERVERS, add_credential, names

INI = """\
# the fleet
bastion ansible_host=203.0.113.5 ansible_user=ops

[web]
web[01:03].example.com ansible_user=deploy
edge:2222 role=edge

[db]
db1 ansible_host=10.0.1.1 ansible_port=5522 ansible_password='not imported'
db2 ansible_host=10.0.1.2 ansible_connection=winrm
local-box ansible_connection=local

[prod:children]
web
db

[cluster_eu1:children]
web

[all:vars]
ansible_user=root
http_port=8080

[web:vars]
http_port=80
it0_labels="role=web,tier=front"

[db:vars]
it0_cluster=db-cluster
"""

YAML = """\
all:
  hosts:
    bastion:
      ansible_host: 203.0.113.5
      ansible_user: ops
  vars:
    ansible_user: root
    http_port: 8080
  children:
    prod:
      children:
        web:
          hosts:
            web[01:03].example.com:
              ansible_user: deploy
            edge:2222:
              role: edge
          vars:
            http_port: 80
            it0_labels:
              role: web
              tier: front
        db:
          hosts:
            db1:
              ansible_host: 10.0.1.1
              ansible_port: 5522
              ansible_password: not imported
            db2:
              ansible_host: 10.0.1.2
              ansible_connection: winrm
            local-box:
              ansible_connection: local
          vars:
            it0_cluster: db-cluster
    cluster_eu1:
      children:
        web:
"""

WEB = ["web01.example.com", "web02.example.com", "web03.example.com"]


def _by_name(hosts: list[InventoryHost]) -> dict[str, InventoryHost]:
    return {h.name: h for h in hosts}


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("parse", [lambda: parse_ini(INI), lambda: parse_yaml(YAML)])
def test_ini_and_yaml_give_the_same_hosts(parse: Any) -> None:
    hosts = _by_name(parse())
    assert list(hosts) == ["bastion", *WEB, "edge", "db1", "db2", "local-box"]
    web = hosts["web02.example.com"]
    assert web.groups == ["cluster_eu1", "prod", "web"]
    assert web.vars["ansible_user"] == "deploy"  # the host's own beats all:vars
    assert web.vars["http_port"] == 80  # the group's beats all's
    assert hosts["bastion"].groups == []
    assert hosts["bastion"].vars["ansible_user"] == "ops"
    assert hosts["db1"].vars["ansible_user"] == "root"
    assert hosts["db1"].vars["ansible_port"] == 5522
    assert hosts["db1"].vars["it0_cluster"] == "db-cluster"
    assert hosts["edge"].port == 2222
    assert hosts["edge"].vars["role"] == "edge"


def test_deeper_groups_override_their_parents() -> None:
    hosts = parse_ini(
        "[leaf]\nh1\n[mid:children]\nleaf\n[top:children]\nmid\n"
        "[top:vars]\nx=top\ny=top\n[mid:vars]\nx=mid\n[leaf:vars]\nz=leaf\n"
    )
    assert hosts[0].vars == {"x": "mid", "y": "top", "z": "leaf"}
    assert hosts[0].groups == ["leaf", "mid", "top"]


def test_a_host_in_several_groups_collects_their_vars_and_its_own() -> None:
    hosts = parse_ini("[a]\nh1 one=1\n[b]\nh1 two=2\n[b:vars]\nthree=3\n")
    assert hosts[0].vars == {"one": 1, "two": 2, "three": 3}
    assert hosts[0].groups == ["a", "b"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("web[01:03]", ["web01", "web02", "web03"]),
        ("web[1:3].example.com", ["web1.example.com", "web2.example.com", "web3.example.com"]),
        ("db-[a:c]", ["db-a", "db-b", "db-c"]),
        ("n[0:6:3]", ["n0", "n3", "n6"]),
        ("n[:2]", ["n0", "n1", "n2"]),
        ("r[1:2]-[a:b]", ["r1-a", "r1-b", "r2-a", "r2-b"]),
        ("plain", ["plain"]),
    ],
)
def test_host_ranges(pattern: str, expected: list[str]) -> None:
    assert [name for name, _ in expand_pattern(pattern)] == expected


def test_host_and_port() -> None:
    assert expand_pattern("db:2222") == [("db", 2222)]
    assert expand_pattern("web[1:2]:2200") == [("web1", 2200), ("web2", 2200)]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[web\nh1\n", 1),
        ("ok\n[web:bogus]\n", 2),  # hosts, vars or children
        ("[web]\nh1 novalue\n", 2),
        ("[web:vars]\n\njust-a-word\n", 3),
        ("[web]\nh1 x='unterminated\n", 2),
        ("[web]\nweb[3:1]\n", 2),
        ("[web]\nweb[01:3]\n", 2),
        ("[web]\nweb[a:3]\n", 2),
        ("[web]\nweb[0:99999]\n", 2),
    ],
)
def test_bad_ini_names_the_line(text: str, line: int) -> None:
    with pytest.raises(InventoryFileError) as caught:
        parse_ini(text)
    assert caught.value.details["line"] == line
    assert caught.value.status == 422


@pytest.mark.parametrize(
    "text",
    [
        "all: [a, b]\n",
        "- web\n",
        "all:\n  hosts: [a, b]\n",
        "all:\n  hostz: {}\n",
        "all:\n  hosts:\n    a: [1]\n",
        "all:\n  hosts: {a: {}\n",
        "web:\n  children:\n    web:\n",
    ],
)
def test_bad_yaml_is_refused(text: str) -> None:
    with pytest.raises(InventoryFileError):
        parse_yaml(text)


def test_yaml_refuses_arbitrary_objects() -> None:
    """safe_load: a tag that would build a Python object is an error, not code."""
    with pytest.raises(InventoryFileError):
        parse_yaml("all: !!python/object/apply:os.system ['true']\n")


def test_the_format_follows_the_file_name() -> None:
    assert [h.name for h in parse_inventory(YAML, "hosts.yml")][:1] == ["bastion"]
    assert [h.name for h in parse_inventory(INI, "hosts")][:1] == ["bastion"]
    assert parse_inventory("", "empty.yaml") == []


# --- the mapping ----------------------------------------------------------------------------


def test_mapping_of_a_host() -> None:
    hosts = _by_name(parse_ini(INI))
    web = map_host(hosts["web01.example.com"])
    assert (web.address, web.port, web.username, web.connection) == (
        "web01.example.com",
        22,
        "deploy",
        "ssh",
    )
    assert (web.environment, web.cluster) == ("prod", "eu1")
    assert web.labels == {
        "group.cluster_eu1": "true",
        "group.prod": "true",
        "group.web": "true",
        "role": "web",
        "tier": "front",
    }
    db1 = map_host(hosts["db1"])
    assert (db1.address, db1.port, db1.cluster) == ("10.0.1.1", 5522, "db-cluster")
    assert db1.warnings == [
        "db1: ansible_password is not imported; keep secrets in the credential vault"
    ]
    assert "not imported" not in json.dumps(db1.labels)  # the password went nowhere
    assert map_host(hosts["edge"]).port == 2222
    assert map_host(hosts["local-box"]).connection == "local"
    assert map_host(hosts["db2"]).connection == "winrm"
    bastion = map_host(hosts["bastion"])
    assert (bastion.environment, bastion.cluster, bastion.labels) == (None, None, {})


def test_labels_that_cannot_be_labels_are_left_out_with_a_warning() -> None:
    [host] = parse_yaml(
        "all:\n  children:\n    'odd group':\n      hosts:\n        h1:\n"
        "          it0_labels: {env: prod, team: ops, note: 'a b'}\n"
    )
    mapping = map_host(host)
    assert mapping.labels == {"team": "ops"}
    assert sorted(mapping.warnings) == [
        "h1: label env=prod is not valid; left out",
        "h1: label group.odd group=true is not valid; left out",
        "h1: label note=a b is not valid; left out",
    ]


@pytest.mark.parametrize(
    ("text", "environment"),
    [
        ("[production]\nh1\n", "prod"),
        ("[stage]\nh1\n", "staging"),
        ("[web]\nh1 env=Production\n", "prod"),
        ("[prod]\nh1 it0_environment=qa\n", "qa"),
        ("[prod]\nh1\n[dev]\nh1\n", None),  # contradicting groups: left alone, with a warning
    ],
)
def test_environment(text: str, environment: str | None) -> None:
    mapping = map_host(parse_ini(text)[0])
    assert mapping.environment == environment
    assert bool(mapping.warnings) is (environment is None)


# --- importing ------------------------------------------------------------------------------


async def _import(platform: Platform, text: str, name: str, dry_run: bool = False) -> ImportReport:
    async with recorder(platform) as audit:
        return await import_inventory(
            audit, parse_inventory(text, name), dry_run=dry_run, source=name
        )


@pytest.mark.parametrize(("text", "filename"), [(INI, "hosts.ini"), (YAML, "hosts.yml")])
async def test_import_creates_then_changes_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    text: str,
    filename: str,
) -> None:
    before = await audit_events(client, admin)
    dry = await _import(platform, text, filename, dry_run=True)
    assert dry.created == ["bastion", *WEB, "edge", "db1", "local-box"]
    assert dry.clusters_created == ["eu1", "db-cluster"]
    # the dry run wrote nothing, not even an event
    assert await names(client, admin, selector="kind=ssh") == []
    assert (await client.get(f"{API}/clusters", headers=admin)).json()["items"] == []
    assert len(await audit_events(client, admin)) == len(before)

    report = await _import(platform, text, filename)
    assert report.created == dry.created
    assert (report.updated, report.unchanged) == ([], [])
    assert report.skipped == {"db2": "connection 'winrm' is not supported"}
    assert report.clusters_created == ["eu1", "db-cluster"]
    assert any("ansible_password" in w for w in report.warnings)

    web = (await client.get(f"{SERVERS}/web02.example.com", headers=admin)).json()
    assert (web["address"], web["port"], web["username"]) == ("web02.example.com", 22, "deploy")
    assert (web["environment"], web["cluster"], web["kind"]) == ("prod", "eu1", "ssh")
    assert web["labels"]["group.web"] == "true"
    assert web["labels"]["tier"] == "front"
    db1 = (await client.get(f"{SERVERS}/db1", headers=admin)).json()
    assert (db1["address"], db1["port"], db1["username"], db1["cluster"]) == (
        "10.0.1.1",
        5522,
        "root",
        "db-cluster",
    )
    assert "not imported" not in json.dumps(db1)
    box = (await client.get(f"{SERVERS}/local-box", headers=admin)).json()
    assert (box["kind"], box["address"]) == ("local", "local-box")
    bastion = (await client.get(f"{SERVERS}/bastion", headers=admin)).json()
    assert (bastion["environment"], bastion["username"]) == ("dev", "ops")
    assert await names(client, admin, selector="group.web=true,tier=front") == [
        "edge",
        *WEB,
    ]

    events = await audit_events(client, admin)
    creates = [e for e in events if e["action"] == "server.create" and e["actor_name"] == "test"]
    assert len(creates) == len(report.created)
    [summary] = [e for e in events if e["action"] == "inventory.import"]
    assert summary["summary"]["created"] == len(report.created)
    assert summary["summary"]["source"] == filename
    assert "not imported" not in json.dumps(events)

    again = await _import(platform, text, filename)
    assert (again.created, again.updated, again.clusters_created) == ([], [], [])
    assert again.unchanged == report.created
    after = await audit_events(client, admin)
    assert [e["action"] for e in after[: len(after) - len(events)]] == ["inventory.import"]


async def test_import_updates_what_changed_and_owns_the_group_labels(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    await _import(platform, "[web]\nweb1 ansible_host=10.0.0.1\nweb2\n[canary]\nweb2\n", "a.ini")
    # labels of people's own survive a re-import; group labels follow the file
    response = await client.patch(
        f"{SERVERS}/web2", json={"labels": {"owner": "team-a"}, "environment": "staging"},
        headers=admin,
    )  # fmt: skip
    assert response.status_code == 200
    report = await _import(
        platform, "[web]\nweb1 ansible_host=10.0.0.9 ansible_port=2200\nweb2\n", "a.ini"
    )
    assert (report.created, report.updated, report.unchanged) == ([], ["web1", "web2"], [])
    web1 = (await client.get(f"{SERVERS}/web1", headers=admin)).json()
    assert (web1["address"], web1["port"]) == ("10.0.0.9", 2200)
    web2 = (await client.get(f"{SERVERS}/web2", headers=admin)).json()
    assert web2["labels"] == {"group.web": "true", "owner": "team-a"}
    assert web2["environment"] == "staging"  # the file does not say, so it stays
    [update] = [
        e["summary"]
        for e in await audit_events(client, admin, "server.update")
        if e["summary"]["name"] == "web2" and e["actor_name"] == "test"
    ]
    assert update["changes"] == {"labels": {"group.web": "true", "owner": "team-a"}}


async def test_import_skips_what_it_cannot_take(platform: Platform) -> None:
    report = await _import(
        platform,
        "[web]\nok1\nbad_name!\nbad-port ansible_port=http\nbad-user ansible_user='a b'\n"
        "bad-env env=Prod_1\nbad-cluster cluster='x y'\n"
        "with-key it0_credential=nope\n",
        "x.ini",
    )
    assert report.created == ["ok1", "with-key"]
    assert set(report.skipped) == {"bad_name!", "bad-port", "bad-user", "bad-env", "bad-cluster"}
    assert report.skipped["bad-port"].startswith("port:")
    assert report.skipped["bad_name!"].startswith("name:")
    assert report.skipped["bad-cluster"].startswith("name:")  # of the cluster it would create
    assert "with-key: no credential 'nope'" in report.warnings


async def test_import_links_credentials_by_name(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    credential_id = await add_credential(platform, "ops-key")
    await _import(platform, "h1 it0_credential=ops-key\n", "c.ini")
    server = (await client.get(f"{SERVERS}/h1", headers=admin)).json()
    assert server["credential_id"] == str(credential_id)


async def test_cli_import(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform, tmp_path: Path
) -> None:
    path = tmp_path / "inventory.ini"
    path.write_text(INI)
    settings = platform.settings
    result = await run_cli(settings, "servers", "import", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would be created (7)" in result.output
    assert "skipped db2: connection 'winrm' is not supported" in result.output
    assert await names(client, admin, selector="kind=ssh") == []

    result = await run_cli(settings, "servers", "import", path, "--tenant", "default")
    assert result.exit_code == 0, result.output
    assert "created (7)" in result.output
    assert "ansible_password is not imported" in result.output
    result = await run_cli(settings, "servers", "import", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert (report["created"], report["updated"], len(report["unchanged"])) == ([], [], 7)

    bad = tmp_path / "bad.yml"
    bad.write_text("all: [1, 2]\n")
    result = await run_cli(settings, "servers", "import", bad)
    assert result.exit_code == 2
    assert "mapping" in result.output
    result = await run_cli(settings, "servers", "import", tmp_path / "missing.ini")
    assert result.exit_code == 2
    assert "cannot read" in result.output
    result = await run_cli(settings, "servers", "import", path, "--tenant", "nope")
    assert result.exit_code == 2


async def test_imported_servers_are_other_tenants_business_too(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    """An import lands in the tenant it names, and nowhere else."""
    response = await client.post(f"{API}/tenants", json={"slug": "acme"}, headers=admin)
    assert response.status_code == 201
    path_text = "[web]\nacme-web\n"
    async with platform.db.session("t_acme", write=True) as session:
        audit = TenantRecorder(
            platform, session, ("acme", "t_acme"), AuditContext(Actor.system("test"))
        )
        await import_inventory(audit, parse_ini(path_text))
    assert (await client.get(f"{SERVERS}/acme-web", headers=admin)).status_code == 404
