"""Import servers from an Ansible inventory (INI or YAML), without Ansible.

What a host becomes:

=========================  =================================================================
server ``name``            the inventory hostname (ranges such as ``web[01:03]`` expanded)
``address``                ``ansible_host`` (or ``ansible_ssh_host``), else the hostname
``port``                   ``ansible_port`` (or ``ansible_ssh_port``), ``host:port``, else 22
``username``               ``ansible_user`` (or ``ansible_ssh_user``); unchanged when absent
``kind``                   ``local`` for ``ansible_connection=local``, else ``ssh`` (other
                           connections, e.g. winrm, are skipped)
``environment``            var ``it0_environment``, ``env`` or ``environment``, else a group
                           named prod/production, staging/stage or dev/development;
                           unchanged when none says
``cluster``                var ``it0_cluster`` or ``cluster``, else a group ``cluster_<name>``;
                           created when missing; unchanged when none says
``labels``                 ``group.<group>=true`` for every group the host is in, directly
                           or through ``children`` (not ``all`` / ``ungrouped``), plus the
                           var ``it0_labels`` (a mapping, or ``k=v,k2=v2``)
credential                 var ``it0_credential``: the name of a vault credential
=========================  =================================================================

Variables apply as in Ansible: ``all``, then groups by depth (a child group overrides its
parent), then the host's own. The ``group.`` labels belong to the importer: a host taken out
of a group in the file loses that label on the next import; other labels are left alone, and
so are servers the file does not mention. Importing the same file again changes nothing.
Passwords and key files in the inventory are never imported (a warning says so).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import select

from it0.inventory.errors import InventoryFileError
from it0.inventory.models import Cluster, Credential, Server
from it0.inventory.schemas import ClusterCreate, ServerCreate, ServerUpdate
from it0.inventory.selectors import FIELD_KEYS, LABEL_KEY, LABEL_VALUE
from it0.inventory.service import Recorder, create_cluster, create_server, update_server

MAX_HOSTS = 10_000
UNGROUPED = "ungrouped"
_RANGE = re.compile(r"^(.*?)\[([^\]:]*):([^\]:]*)(?::(\d+))?\](.*)$")
_LABEL_KEY = re.compile(LABEL_KEY)
_LABEL_VALUE = re.compile(LABEL_VALUE)
_BRACKETS = re.compile(r"\[[^\]]*\]")
_SECRETS = (
    "ansible_password",
    "ansible_ssh_pass",
    "ansible_ssh_password",
    "ansible_become_password",
    "ansible_become_pass",
    "ansible_ssh_private_key_file",
    "ansible_private_key_file",
)


@dataclass
class InventoryHost:
    """A host as Ansible would see it: its variables and every group it belongs to."""

    name: str
    vars: dict[str, Any]
    groups: list[str]
    port: int | None = None  # from a ``host:port`` pattern


@dataclass
class _Group:
    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class _Inventory:
    groups: dict[str, _Group] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    order: dict[str, None] = field(default_factory=dict)  # hosts in first-seen order

    def group(self, name: str) -> _Group:
        if name not in self.groups:
            self.groups[name] = _Group(name)
        return self.groups[name]

    def add_host(self, group: str, pattern: str, host_vars: dict[str, Any], line: int) -> None:
        for name, port in expand_pattern(pattern, line):
            self.order[name] = None
            if len(self.order) > MAX_HOSTS:
                raise InventoryFileError(
                    f"more than {MAX_HOSTS} hosts", details={"line": line, "field": "file"}
                )
            if port is not None:
                self.ports[name] = port
            self.group(group).hosts.setdefault(name, {}).update(host_vars)

    def add_child(self, parent: str, child: str) -> None:
        self.group(child)
        children = self.group(parent).children
        if child not in children:
            children.append(child)

    def hosts(self) -> list[InventoryHost]:
        parents: dict[str, set[str]] = {}
        for group in self.groups.values():
            for child in group.children:
                parents.setdefault(child, set()).add(group.name)
        depth = {name: self._depth(name, parents, ()) for name in self.groups}
        result = []
        for name in self.order:
            direct = [g for g in self.groups.values() if name in g.hosts]
            groups: set[str] = set()
            for group in direct:
                groups |= self._ancestors(group.name, parents)
            variables = dict(self.group("all").vars)
            for inherited in sorted(groups - {"all"}, key=lambda n: (depth[n], n)):
                variables.update(self.groups[inherited].vars)
            for group in sorted(direct, key=lambda g: (depth[g.name], g.name)):
                variables.update(group.hosts[name])
            labelled = sorted(groups - {"all", UNGROUPED})
            result.append(InventoryHost(name, variables, labelled, self.ports.get(name)))
        return result

    def _depth(self, name: str, parents: dict[str, set[str]], seen: tuple[str, ...]) -> int:
        if name == "all":
            return 0
        if name in seen:
            raise InventoryFileError(
                f"group {name!r} is its own ancestor", details={"field": "children"}
            )
        above = parents.get(name, set()) - {"all"}
        return 1 + max((self._depth(p, parents, (*seen, name)) for p in above), default=0)

    def _ancestors(self, name: str, parents: dict[str, set[str]]) -> set[str]:
        found, todo = {name}, [name]
        while todo:
            for parent in parents.get(todo.pop(), ()):
                if parent not in found:
                    found.add(parent)
                    todo.append(parent)
        return found


def expand_pattern(pattern: str, line: int = 0) -> list[tuple[str, int | None]]:
    """``web[01:03].example.com`` -> three names; ``db:2222`` -> (``db``, 2222)."""
    port = None
    head, sep, tail = pattern.rpartition(":")
    # one colon outside the ranges: a port (an IPv6 address has several and no port)
    if sep and tail.isdigit() and _BRACKETS.sub("", pattern).count(":") == 1:
        pattern, port = head, int(tail)
    return [(name, port) for name in _expand(pattern, line)]


def _expand(pattern: str, line: int) -> list[str]:
    match = _RANGE.match(pattern)
    if match is None:
        return [pattern]
    head, begin, end, step_text, tail = match.groups()
    step = int(step_text or 1)

    def bad(why: str) -> InventoryFileError:
        return InventoryFileError(
            f"bad host range in {pattern!r}: {why}", details={"line": line, "field": "hosts"}
        )

    if step < 1:
        raise bad("the step must be at least 1")
    begin = begin or "0"
    if begin.isdigit() and end.isdigit():
        width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
        if width and len(end) != width:
            raise bad("zero-padded begin and end must have the same length")
        numbers = range(int(begin), int(end) + 1, step)
        items = [str(n).zfill(width) for n in numbers[: MAX_HOSTS + 1]]
    elif len(begin) == 1 and len(end) == 1 and begin.isalpha() and end.isalpha():
        items = [chr(c) for c in range(ord(begin), ord(end) + 1, step)]
    else:
        raise bad("expected numbers or single letters")
    if not items:
        raise bad("the range is empty")
    if len(items) > MAX_HOSTS:
        raise bad(f"more than {MAX_HOSTS} hosts")
    rest = _expand(tail, line)
    return [head + item + r for item in items for r in rest]


# --- INI ------------------------------------------------------------------------------------


def _ini_value(text: str) -> Any:
    text = text.strip()
    if text[:1] in ("'", '"'):
        try:
            parts = shlex.split(text, comments=True)
        except ValueError:
            return text
        return parts[0] if parts else ""
    text = re.split(r"\s+[#;]", text, maxsplit=1)[0].strip()
    return int(text) if text.isdigit() else text


def parse_ini(text: str) -> list[InventoryHost]:
    """Ansible's INI inventory: ``[group]``, ``[group:vars]``, ``[group:children]``."""
    inv = _Inventory()
    inv.group("all")
    group, section = UNGROUPED, "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue

        def fail(why: str, number: int = number) -> InventoryFileError:
            return InventoryFileError(f"line {number}: {why}", details={"line": number})

        if line.startswith("["):
            header = re.fullmatch(r"\[([^\[\]\s]+)\]\s*(?:[#;].*)?", line)
            if header is None:
                raise fail("expected a section header such as [web] or [web:vars]")
            group, _, section = header.group(1).partition(":")
            section = section or "hosts"
            if section not in ("hosts", "vars", "children"):
                raise fail(f"unknown section kind {section!r} (vars or children)")
            inv.group(group)
            if group != "all" and section != "vars":
                inv.add_child("all", group)
            continue
        if section == "vars":
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise fail("expected key=value")
            inv.group(group).vars[key.strip()] = _ini_value(value)
        elif section == "children":
            inv.add_child(group, line.split()[0])
        else:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                raise fail(f"cannot split the line ({exc})") from None
            if not tokens:
                continue
            host_vars: dict[str, Any] = {}
            for token in tokens[1:]:
                key, sep, value = token.partition("=")
                if not sep or not key:
                    raise fail(f"expected key=value after the host, found {token!r}")
                host_vars[key] = int(value) if value.isdigit() else value
            inv.add_host(group, tokens[0], host_vars, number)
    return inv.hosts()


# --- YAML -----------------------------------------------------------------------------------


def parse_yaml(text: str) -> list[InventoryHost]:
    """Ansible's YAML inventory: groups with ``hosts``, ``vars`` and ``children``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InventoryFileError(
            f"not valid YAML{f' (line {line})' if line else ''}", details={"line": line}
        ) from None
    inv = _Inventory()
    inv.group("all")
    if data is None:
        return []
    if not isinstance(data, dict):
        raise InventoryFileError("the inventory must be a mapping of groups", details={})
    for name, body in data.items():
        _yaml_group(inv, str(name), body, "all")
    return inv.hosts()


def _yaml_group(inv: _Inventory, name: str, body: Any, parent: str | None) -> None:
    if parent is not None and name != "all":
        inv.add_child(parent, name)
    group = inv.group(name)
    if body is None:
        return
    if not isinstance(body, dict):
        raise InventoryFileError(f"group {name!r} must be a mapping", details={"group": name})
    unknown = sorted(str(k) for k in body if k not in ("hosts", "vars", "children"))
    if unknown:
        raise InventoryFileError(
            f"group {name!r} has unknown keys {unknown} (hosts, vars, children)",
            details={"group": name},
        )
    for key in ("hosts", "vars", "children"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InventoryFileError(
                f"{key} of group {name!r} must be a mapping", details={"group": name}
            )
    for host, host_vars in (body.get("hosts") or {}).items():
        if host_vars is not None and not isinstance(host_vars, dict):
            raise InventoryFileError(
                f"the vars of host {host!r} must be a mapping", details={"group": name}
            )
        inv.add_host(name, str(host), {str(k): v for k, v in (host_vars or {}).items()}, 0)
    group.vars.update({str(k): v for k, v in (body.get("vars") or {}).items()})
    for child, child_body in (body.get("children") or {}).items():
        _yaml_group(inv, str(child), child_body, name)


def parse_inventory(text: str, filename: str = "") -> list[InventoryHost]:
    """By file name: ``.yml``, ``.yaml`` and ``.json`` are YAML, anything else INI."""
    if PurePath(filename).suffix.lower() in (".yml", ".yaml", ".json"):
        return parse_yaml(text)
    return parse_ini(text)


# --- from hosts to servers ------------------------------------------------------------------

_SSH = frozenset({"ssh", "smart", "paramiko", "paramiko_ssh"})
_ENV_NAMES = {
    "prod": "prod",
    "production": "prod",
    "staging": "staging",
    "stage": "staging",
    "dev": "dev",
    "development": "dev",
}


@dataclass
class HostMapping:
    """The server fields an inventory host asks for; None: the file does not say."""

    name: str
    address: str
    port: int
    connection: str  # ssh, local, or one IT0 cannot use
    username: str | None
    environment: str | None
    cluster: str | None
    labels: dict[str, str]
    credential: str | None
    warnings: list[str]


def _first(variables: dict[str, Any], *names: str) -> Any:
    for name in names:
        if variables.get(name) is not None:
            return variables[name]
    return None


def _labels_var(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = (p.partition("=") for p in str(value).split(",") if p.strip())
    return {k.strip(): v.strip() for k, _, v in pairs}


def _one_of(names: Iterable[str], what: str, host: str, warnings: list[str]) -> str | None:
    found = sorted(set(names))
    if len(found) > 1:
        warnings.append(f"{host}: in groups for several {what}s ({', '.join(found)}); none set")
    return found[0] if len(found) == 1 else None


def map_host(host: InventoryHost) -> HostMapping:
    """What the host becomes (unvalidated: the request schema has the final word)."""
    v = host.vars
    warnings = [
        f"{host.name}: {key} is not imported; keep secrets in the credential vault"
        for key in _SECRETS
        if key in v
    ]
    connection = str(_first(v, "ansible_connection") or "ssh")
    environment = _first(v, "it0_environment", "env", "environment")
    if environment is not None:
        environment = _ENV_NAMES.get(str(environment).lower(), str(environment).lower())
    else:
        environment = _one_of(
            (_ENV_NAMES[g.lower()] for g in host.groups if g.lower() in _ENV_NAMES),
            "environment",
            host.name,
            warnings,
        )
    cluster = _first(v, "it0_cluster", "cluster")
    if cluster is None:
        cluster = _one_of(
            (g.removeprefix("cluster_") for g in host.groups if g.startswith("cluster_")),
            "cluster",
            host.name,
            warnings,
        )
    labels = {f"group.{g}": "true" for g in host.groups}
    if _first(v, "it0_labels") is not None:
        labels.update(_labels_var(v["it0_labels"]))
    for key, value in list(labels.items()):
        # an odd group name costs its label, not the whole host
        if key in FIELD_KEYS or not (_LABEL_KEY.match(key) and _LABEL_VALUE.match(value)):
            warnings.append(f"{host.name}: label {key}={value} is not valid; left out")
            del labels[key]
    port = _first(v, "ansible_port", "ansible_ssh_port")
    username = _first(v, "ansible_user", "ansible_ssh_user")
    credential = _first(v, "it0_credential")
    return HostMapping(
        name=host.name,
        address=str(_first(v, "ansible_host", "ansible_ssh_host") or host.name),
        port=(host.port or 22) if port is None else _int(port),
        connection="ssh" if connection in _SSH else connection,
        username=None if username is None else str(username),
        environment=environment,
        cluster=None if cluster is None else str(cluster),
        labels=labels,
        credential=None if credential is None else str(credential),
        warnings=warnings,
    )


def _int(value: Any) -> int:
    return int(value) if str(value).isdigit() else -1  # -1: refused by the schema, named


# --- applying -------------------------------------------------------------------------------


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    clusters_created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {
            "created": len(self.created),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "skipped": len(self.skipped),
            "clusters_created": len(self.clusters_created),
        }


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg', 'invalid')}"


def _differences(
    server: Server, cluster: Cluster | None, want: ServerCreate, mapping: HostMapping
) -> dict[str, Any]:
    """The ServerUpdate fields that would make ``server`` what the file says."""
    changes: dict[str, Any] = {
        k: getattr(want, k)
        for k in ("address", "port", "kind")
        if getattr(server, k) != getattr(want, k)
    }
    if mapping.username is not None and server.username != want.username:
        changes["username"] = want.username
    if mapping.environment is not None and server.environment != want.environment:
        changes["environment"] = want.environment
    if want.cluster is not None and (cluster.name if cluster else None) != want.cluster:
        changes["cluster"] = want.cluster
    if want.credential_id is not None and server.credential_id != want.credential_id:
        changes["credential_id"] = want.credential_id
    kept = {k: v for k, v in server.labels.items() if not k.startswith("group.")}
    desired = {**kept, **want.labels}
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if server.labels.get(k) != v}
    patch.update({k: None for k in server.labels if k not in desired})
    if patch:
        changes["labels"] = patch
    return changes


async def import_inventory(
    audit: Recorder, hosts: list[InventoryHost], *, dry_run: bool = False, source: str = ""
) -> ImportReport:
    """Create or update a server per host (idempotent); with ``dry_run`` nothing is written."""
    session = audit.session
    report = ImportReport(dry_run=dry_run)
    servers = {s.name: s for s in (await session.scalars(select(Server))).all()}
    clusters = {c.name: c for c in (await session.scalars(select(Cluster))).all()}
    by_id = {c.id: c for c in clusters.values()}
    rows = await session.execute(select(Credential.name, Credential.id))
    credentials = {name: credential_id for name, credential_id in rows}
    for host in hosts:
        mapping = map_host(host)
        report.warnings += mapping.warnings
        if mapping.connection not in ("ssh", "local"):
            report.skipped[host.name] = f"connection {mapping.connection!r} is not supported"
            continue
        credential_id = None
        if mapping.credential is not None:
            credential_id = credentials.get(mapping.credential)
            if credential_id is None:
                report.warnings.append(f"{host.name}: no credential {mapping.credential!r}")
        try:
            want = ServerCreate(
                name=mapping.name,
                address=mapping.address,
                port=mapping.port,
                username=mapping.username,
                kind=mapping.connection,
                environment=mapping.environment or "dev",
                labels=mapping.labels,
                cluster=mapping.cluster,
                credential_id=credential_id,
            )
            new_cluster = (
                ClusterCreate(name=want.cluster)
                if want.cluster is not None and want.cluster not in clusters
                else None
            )
        except ValidationError as exc:
            report.skipped[host.name] = _why(exc)
            continue
        if new_cluster is not None:
            report.clusters_created.append(new_cluster.name)
            clusters[new_cluster.name] = (
                Cluster(name=new_cluster.name)
                if dry_run
                else await create_cluster(audit, new_cluster)
            )
        server = servers.get(want.name)
        if server is None:
            report.created.append(want.name)
            if not dry_run:
                servers[want.name] = await create_server(audit, want)
            continue
        current = by_id.get(server.cluster_id) if server.cluster_id else None
        changes = _differences(server, current, want, mapping)
        if not changes:
            report.unchanged.append(want.name)
            continue
        report.updated.append(want.name)
        if not dry_run:
            await update_server(audit, server, ServerUpdate.model_validate(changes))
    if not dry_run:
        await audit.record(
            "inventory.import",
            "inventory",
            None,
            {"source": source, **report.counts(), "clusters": report.clusters_created},
        )
    return report
