"""Credentials: write-only API and CLI, round trips of every key type, use, isolation."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from it0.audit import Actor, AuditContext
from it0.audit.models import AuditEvent
from it0.auth.tokens import TenantRef, find_tenant
from it0.cli import app as cli_app
from it0.core.errors import NotFoundError
from it0.inventory.credentials import DecryptedCredential, open_credential
from it0.inventory.models import Credential, Server, VaultKey
from it0.inventory.vault import DecryptionFailed
from it0.platform import Platform
from tests.audit.helpers import cli_env, run_cli
from tests.auth.helpers import (
    API,
    audit_events,
    bearer,
    code_of,
    error_of,
    login_tokens,
    member_headers,
)
from tests.conftest import ADMIN_PASSWORD

URL = f"{API}/credentials"
EXECUTOR = AuditContext(Actor.system("executor"))
KEY_TYPES = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp521", "ssh-rsa"]
PASSPHRASE = "pass-Phrase-canary-4711"
PASSWORD = "login-Password-canary-0815"
SUDO = "sudo-Password-canary-1312"

# made by `ssh-keygen -t ed25519 -N vector-passphrase`: the OpenSSH format that ssh-keygen
# encrypts with bcrypt (a throwaway test key)
OPENSSH_ENCRYPTED = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABAMxFeDD/
eXn7TkbHZjaBJAAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIOTvZsLTW4FBSiyl
/KbSDqZNkwNXgyksLLUdBVx1vGyaAAAAkOmoUrJ98chYWmJXPxFkjmKSt5ZfaijusJ6sqx
kLgMFa5IVs2B6cUonJGnKvrNd8URBuj/I+RzYIZEGltRIo60Iag6kjiWmhYuc1r2RtSJK0
6NJJEJ3oYNyasb+1cniVXgP8f3j/mbEt4iPcMCXBwe3LC5W/70wjGdv+IdOxiYngvR8mZL
hf3MeUGV2dwVbc3g==
-----END OPENSSH PRIVATE KEY-----
"""
OPENSSH_ENCRYPTED_FINGERPRINT = "SHA256:GaEfjNHNHQJB7twspHhssGrYiA5AHvy2uuLq8fAK+BI"


@pytest.fixture(scope="module")
def keys() -> dict[str, asyncssh.SSHKey]:
    made = {alg: asyncssh.generate_private_key(alg) for alg in KEY_TYPES if alg != "ssh-rsa"}
    return {**made, "ssh-rsa": asyncssh.generate_private_key("ssh-rsa", key_size=2048)}


def _export(key: asyncssh.SSHKey, passphrase: str | None = None) -> str:
    # encrypted: PKCS#8 PEM, which needs no bcrypt (OpenSSH's own encryption does)
    if passphrase is None:
        return key.export_private_key("openssh").decode()
    return key.export_private_key("pkcs8-pem", passphrase).decode()


def _key_body(pem: str) -> list[str]:
    """The secret lines of a PEM or OpenSSH private key (what must never show anywhere)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


async def _create(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    response = await client.post(URL, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert isinstance(created, dict)
    return created


async def _tenant(p: Platform, slug: str = "default") -> TenantRef:
    async with p.db.session() as session:
        return await find_tenant(session, slug)


async def _open(
    p: Platform,
    credential_id: str,
    *,
    server_id: uuid.UUID | None = None,
    purpose: str = "facts",
    slug: str = "default",
) -> DecryptedCredential:
    tenant = await _tenant(p, slug)
    async with p.db.session(tenant.schema, write=True) as session:
        return await open_credential(
            p,
            session,
            tenant,
            uuid.UUID(credential_id),
            server_id=server_id,
            purpose=purpose,
            ctx=EXECUTOR,
        )


async def test_every_key_type_round_trips_with_and_without_passphrase(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    keys: dict[str, asyncssh.SSHKey],
) -> None:
    for alg, key in keys.items():
        for passphrase in (None, PASSPHRASE):
            pem = _export(key, passphrase)
            name = f"{alg}-{'enc' if passphrase else 'plain'}"
            body: dict[str, Any] = {"name": name, "kind": "ssh_key", "private_key": pem}
            if passphrase:
                body["passphrase"] = passphrase
            created = await _create(client, admin, **body, username="deploy")
            assert created["key_type"] == alg
            assert created["fingerprint"] == key.get_fingerprint("sha256")
            assert created["fingerprint"].startswith("SHA256:")
            assert created["username"] == "deploy"
            assert created["has_sudo_password"] is False

            used = await _open(platform, created["id"])
            assert used.kind == "ssh_key"
            assert used.private_key == pem
            assert used.passphrase == passphrase
            assert used.password is None
            assert used.sudo_password is None
            assert used.username == "deploy"
            opened = used.ssh_key()
            assert opened.get_fingerprint("sha256") == key.get_fingerprint("sha256")
            assert opened.export_public_key() == key.export_public_key()
    listed = (await client.get(URL, headers=admin)).json()
    assert len(listed) == 2 * len(keys)
    assert [c["name"] for c in listed] == sorted(c["name"] for c in listed)


async def test_password_and_sudo_password_round_trip(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    keys: dict[str, asyncssh.SSHKey],
) -> None:
    created = await _create(
        client, admin, name="db-root", kind="password", password=PASSWORD, sudo_password=SUDO
    )
    assert created["kind"] == "password"
    assert created["key_type"] is None
    assert created["fingerprint"] is None
    assert created["username"] is None
    assert created["has_sudo_password"] is True
    used = await _open(platform, created["id"])
    assert (used.password, used.sudo_password, used.private_key) == (PASSWORD, SUDO, None)
    with pytest.raises(ValueError, match="no private key"):
        used.ssh_key()

    with_key = await _create(
        client,
        admin,
        name="web-key",
        kind="ssh_key",
        private_key=_export(keys["ssh-ed25519"]),
        sudo_password=SUDO,
    )
    assert with_key["has_sudo_password"] is True
    assert (await _open(platform, with_key["id"])).sudo_password == SUDO


async def test_secrets_never_leave_the_vault(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    keys: dict[str, asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pem = _export(keys["ssh-rsa"], PASSPHRASE)
    plain_pem = _export(keys["ssh-ed25519"])
    secrets = [PASSPHRASE, PASSWORD, SUDO, *_key_body(pem), *_key_body(plain_pem)]
    responses: list[httpx.Response] = []

    async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await client.request(method, path, headers=admin, **kwargs)
        responses.append(response)
        return response

    key_body = {
        "name": "rsa",
        "kind": "ssh_key",
        "private_key": pem,
        "passphrase": PASSPHRASE,
        "sudo_password": SUDO,
    }
    created = (await call("POST", URL, json=key_body)).json()
    assert set(created) == {
        "id",
        "name",
        "kind",
        "username",
        "key_type",
        "fingerprint",
        "created_at",
        "last_used_at",
        "has_sudo_password",
    }
    password_body = {"name": "pw", "kind": "password", "password": PASSWORD}
    other = (await call("POST", URL, json=password_body)).json()
    await call("POST", URL, json={**password_body, "name": "plain", "password": plain_pem})
    # failures echo nothing either
    assert (await call("POST", URL, json=key_body)).status_code == 409
    assert (
        await call("POST", URL, json={**key_body, "name": "x", "passphrase": SUDO})
    ).status_code == 422
    assert (
        await call("POST", URL, json={**key_body, "name": "y", "password": PASSWORD})
    ).status_code == 422
    assert (await call("POST", URL, json={**password_body, "name": "bad name!"})).status_code == 422
    assert (await call("POST", URL, json={**password_body, "extra": PASSWORD})).status_code == 422
    assert (
        await call("POST", URL, json={**key_body, "private_key": plain_pem[:-60]})
    ).status_code == 422
    await call("GET", URL)
    await call("GET", f"{URL}/{created['id']}")
    used = await _open(platform, created["id"], purpose="task:42")
    await _open(platform, other["id"])
    assert PASSPHRASE not in repr(used)
    assert SUDO not in repr(used)
    await call("GET", f"{API}/audit/events", params={"limit": "500"})
    await call("DELETE", f"{URL}/{other['id']}")
    await call("GET", f"{API}/audit/events", params={"limit": "500"})
    await call("GET", "/openapi.json")

    for response in responses:
        for secret in secrets:
            assert secret not in response.text, (response.request.url, secret[:12])
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert any(r.name == "it0.http" for r in caplog.records)  # the access log was captured
    for secret in secrets:
        assert secret not in logged, secret[:12]

    # the rows hold ciphertexts only, and the audit trail no secret
    async with platform.db.session("t_default") as session:
        rows = (await session.execute(select(Credential.__table__))).all()
        events = (await session.scalars(select(AuditEvent))).all()
    stored = repr(rows) + "".join(e.summary for e in events)
    for secret in secrets:
        assert secret not in stored, secret[:12]
    for row in rows:
        assert row.secret.startswith("v1:")


async def test_invalid_keys_are_rejected_with_422(
    client: httpx.AsyncClient, admin: dict[str, str], keys: dict[str, asyncssh.SSHKey]
) -> None:
    ed25519 = keys["ssh-ed25519"]
    encrypted = _export(ed25519, PASSPHRASE)
    pkcs1 = keys["ecdsa-sha2-nistp256"].export_private_key("pkcs1-pem", PASSPHRASE).decode()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"private_key": "not a key"}, "private_key"),
        ({"private_key": ed25519.export_public_key().decode()}, "private_key"),
        ({"private_key": _export(ed25519)[:-80]}, "private_key"),
        ({"private_key": encrypted}, "passphrase"),
        ({"private_key": encrypted, "passphrase": "wrong passphrase"}, "passphrase"),
        ({"private_key": pkcs1}, "passphrase"),
        ({"private_key": pkcs1, "passphrase": "wrong passphrase"}, "passphrase"),
        ({"private_key": OPENSSH_ENCRYPTED}, "passphrase"),
    ]
    for fields, where in cases:
        response = await client.post(
            URL, json={"name": "k", "kind": "ssh_key", **fields}, headers=admin
        )
        assert response.status_code == 422, (fields, response.text)
        error = error_of(response)
        assert error["code"] == "invalid_private_key"
        assert error["details"] == {"field": where}, error
        for line in _key_body(fields["private_key"]):
            assert line not in response.text

    for alg in ("ssh-ed448", "ssh-dss"):
        pem = asyncssh.generate_private_key(alg).export_private_key("openssh").decode()
        response = await client.post(
            URL, json={"name": "k", "kind": "ssh_key", "private_key": pem}, headers=admin
        )
        assert response.status_code == 422
        assert "unsupported key type" in error_of(response)["message"]

    # fields of the other kind, or missing ones, are refused by the schema
    for body in (
        {"kind": "ssh_key"},
        {"kind": "ssh_key", "private_key": _export(ed25519), "password": PASSWORD},
        {"kind": "password"},
        {"kind": "password", "password": PASSWORD, "private_key": _export(ed25519)},
        {"kind": "password", "password": PASSWORD, "passphrase": PASSPHRASE},
        {"kind": "token", "password": PASSWORD},
        {"kind": "password", "password": ""},
        {"kind": "password", "password": "nul\x00"},
    ):
        response = await client.post(URL, json={"name": "k", **body}, headers=admin)
        assert response.status_code == 422, (body, response.text)
        assert code_of(response) == "validation_error"
    assert (await client.get(URL, headers=admin)).json() == []


async def test_keys_encrypted_by_ssh_keygen_are_accepted(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = {
        "name": "ssh-keygen",
        "kind": "ssh_key",
        "private_key": OPENSSH_ENCRYPTED,
        "passphrase": "vector-passphrase",
    }
    response = await client.post(URL, json=body, headers=admin)
    assert response.status_code == 201, response.text  # OpenSSH's own format needs bcrypt
    assert response.json()["fingerprint"] == OPENSSH_ENCRYPTED_FINGERPRINT


async def test_viewers_read_operators_write(
    client: httpx.AsyncClient, admin: dict[str, str], keys: dict[str, asyncssh.SSHKey]
) -> None:
    viewer = await member_headers(client, admin, "vera", role="viewer")
    operator = await member_headers(client, admin, "otto", role="operator")
    body = {"name": "k", "kind": "ssh_key", "private_key": _export(keys["ssh-ed25519"])}

    response = await client.post(URL, json=body, headers=viewer)
    assert response.status_code == 403
    assert error_of(response)["details"] == {"permission": "servers:write"}
    created = await _create(client, operator, **body)
    assert [c["id"] for c in (await client.get(URL, headers=viewer)).json()] == [created["id"]]
    assert (await client.get(f"{URL}/{created['id']}", headers=viewer)).status_code == 200
    response = await client.delete(f"{URL}/{created['id']}", headers=viewer)
    assert response.status_code == 403
    assert code_of(response) == "missing_permission"
    assert (await client.delete(f"{URL}/{created['id']}", headers=operator)).status_code == 204
    assert (await client.get(f"{URL}/{created['id']}", headers=viewer)).status_code == 404
    assert (await client.get(URL)).status_code == 401


async def test_create_use_and_delete_are_audited(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    keys: dict[str, asyncssh.SSHKey],
) -> None:
    key = keys["ecdsa-sha2-nistp256"]
    created = await _create(
        client,
        admin,
        name="ops",
        kind="ssh_key",
        private_key=_export(key, PASSPHRASE),
        passphrase=PASSPHRASE,
        username="ops",
        sudo_password=SUDO,
    )
    assert created["last_used_at"] is None
    tenant = await _tenant(platform)
    server_id = uuid.uuid4()
    async with platform.db.session(tenant.schema, write=True) as session:
        session.add(
            Server(
                id=server_id,
                name="web-1",
                address="10.0.0.1",
                credential_id=uuid.UUID(created["id"]),
            )
        )
        await platform.audit.record(session, tenant.pair, EXECUTOR, "server.create", "server")
    await _open(platform, created["id"], server_id=server_id, purpose="task:7")
    used = (await client.get(f"{URL}/{created['id']}", headers=admin)).json()
    assert used["last_used_at"] is not None
    # to the minute: a second use right after (every use is audited) leaves it as it was
    await _open(platform, created["id"], server_id=server_id, purpose="task:8")
    again = (await client.get(f"{URL}/{created['id']}", headers=admin)).json()
    assert again["last_used_at"] == used["last_used_at"]
    assert (await client.delete(f"{URL}/{created['id']}", headers=admin)).status_code == 204
    async with platform.db.session(tenant.schema) as session:
        server = await session.get(Server, server_id)
    assert server is not None
    assert server.credential_id is None  # the server stays, without its credential

    [create] = await audit_events(client, admin, "credential.create")
    assert create["resource_id"] == created["id"]
    assert create["actor_name"] == "admin"
    assert create["summary"] == {
        "name": "ops",
        "kind": "ssh_key",
        "username": "ops",
        "key_type": "ecdsa-sha2-nistp256",
        "fingerprint": key.get_fingerprint("sha256"),
        "sudo": True,
    }
    uses = await audit_events(client, admin, "credential.use")
    assert sorted(u["summary"]["purpose"] for u in uses) == ["task:7", "task:8"]
    use = next(u for u in uses if u["summary"]["purpose"] == "task:7")
    assert use["actor_name"] == "executor"
    assert use["summary"] == {"name": "ops", "server_id": str(server_id), "purpose": "task:7"}
    [delete] = await audit_events(client, admin, "credential.delete")
    assert delete["summary"] == {"name": "ops", "servers_unset": 1}


async def test_a_moved_or_changed_ciphertext_does_not_open(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    keys: dict[str, asyncssh.SSHKey],
) -> None:
    one = await _create(
        client, admin, name="one", kind="password", password=PASSWORD, sudo_password=SUDO
    )
    two = await _create(
        client,
        admin,
        name="two",
        kind="ssh_key",
        private_key=_export(keys["ssh-ed25519"], PASSPHRASE),
        passphrase=PASSPHRASE,
    )
    tenant = await _tenant(platform)

    async def tamper(credential_id: str, **values: Any) -> None:
        async with platform.db.session(tenant.schema, write=True) as session:
            await session.execute(
                update(Credential).where(Credential.id == uuid.UUID(credential_id)).values(values)
            )
            await platform.audit.record(session, tenant.pair, EXECUTOR, "test.tamper", "x")

    async with platform.db.session(tenant.schema) as session:
        row_one = await session.get(Credential, uuid.UUID(one["id"]))
        row_two = await session.get(Credential, uuid.UUID(two["id"]))
    assert row_one is not None
    assert row_two is not None

    # another row's secret
    await tamper(two["id"], secret=row_one.secret)
    with pytest.raises(DecryptionFailed, match="copied from another record or field"):
        await _open(platform, two["id"])
    # another field of the same row
    await tamper(two["id"], secret=row_two.secret, passphrase=row_two.secret)
    with pytest.raises(DecryptionFailed):
        await _open(platform, two["id"])
    await tamper(one["id"], secret=row_one.sudo_password)
    with pytest.raises(DecryptionFailed):
        await _open(platform, one["id"])
    # changed in place
    assert row_one.secret is not None
    flipped = (
        row_one.secret[:-6] + ("A" if row_one.secret[-6] != "A" else "B") + row_one.secret[-5:]
    )
    await tamper(one["id"], secret=flipped)
    with pytest.raises(DecryptionFailed):
        await _open(platform, one["id"])
    # the failures did not count as uses
    assert (await client.get(f"{URL}/{one['id']}", headers=admin)).json()["last_used_at"] is None
    # put back, they open again
    await tamper(one["id"], secret=row_one.secret)
    await tamper(two["id"], passphrase=row_two.passphrase)
    assert (await _open(platform, one["id"])).password == PASSWORD
    assert (await _open(platform, two["id"])).passphrase == PASSPHRASE


async def test_other_tenants_credentials_are_not_found(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    platform: Platform,
    keys: dict[str, asyncssh.SSHKey],
) -> None:
    response = await client.post(f"{API}/tenants", json={"slug": "other"}, headers=admin)
    assert response.status_code == 201, response.text
    other_admin = bearer(
        (await login_tokens(client, "admin", ADMIN_PASSWORD, "other"))["access_token"]
    )
    theirs = await _create(
        client,
        other_admin,
        name="theirs",
        kind="ssh_key",
        private_key=_export(keys["ssh-ed25519"]),
    )
    ours = await _create(client, admin, name="ours", kind="password", password=PASSWORD)

    for method in ("GET", "DELETE"):
        response = await client.request(method, f"{URL}/{theirs['id']}", headers=admin)
        assert response.status_code == 404, (method, response.text)
        assert error_of(response) == {
            "code": "not_found",
            "message": "credential not found",
            "details": {},
        }
    listed = (await client.get(URL, headers=admin)).text
    assert theirs["id"] not in listed
    assert "theirs" not in listed
    assert ours["id"] not in (await client.get(URL, headers=other_admin)).text
    with pytest.raises(NotFoundError):
        await _open(platform, theirs["id"])
    # a credential of the same name is fine in another tenant
    await _create(client, admin, name="theirs", kind="password", password=PASSWORD)
    response = await client.get(f"{URL}/{theirs['id']}", headers=other_admin)
    assert response.status_code == 200
    assert (await _open(platform, theirs["id"], slug="other")).key_type == "ssh-ed25519"


async def test_names_are_unique_per_tenant(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await _create(client, admin, name="root", kind="password", password=PASSWORD)
    response = await client.post(
        URL, json={"name": "root", "kind": "password", "password": SUDO}, headers=admin
    )
    assert response.status_code == 409
    assert code_of(response) == "conflict"
    assert (await client.get(f"{URL}/{uuid.uuid4()}", headers=admin)).status_code == 404
    assert (await client.get(f"{URL}/not-a-uuid", headers=admin)).status_code == 422


async def test_credentials_from_the_command_line(
    platform: Platform, tmp_path: Path, keys: dict[str, asyncssh.SSHKey]
) -> None:
    settings = platform.settings
    key = keys["ssh-rsa"]
    pem = _export(key, PASSPHRASE)
    key_file = tmp_path / "id_rsa"
    key_file.write_text(pem)

    async def cli(*args: str | Path, given: str | None = None) -> tuple[int, str]:
        argv = [str(a) for a in args] + ["--data-dir", str(settings.data_dir)]

        def invoke() -> tuple[int, str]:
            result = CliRunner().invoke(cli_app, argv, env=cli_env(settings), input=given)
            return result.exit_code, result.output

        return await asyncio.to_thread(invoke)

    code, output = await cli(
        "credentials",
        "add",
        "web",
        "--key-file",
        key_file,
        "--passphrase-prompt",
        "--username",
        "deploy",
        "--sudo-password-prompt",
        given=f"{PASSPHRASE}\n{SUDO}\n{SUDO}\n",
    )
    assert code == 0, output
    assert f"added credential web (ssh-rsa {key.get_fingerprint('sha256')})" in output
    code, output = await cli(
        "credentials", "add", "db", "--password-prompt", given=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert code == 0, output
    assert "added credential db (password)" in output

    code, output = await cli("credentials", "add", "x", "--password-prompt", given="a\nb\n")
    assert code == 2
    assert "differ" in output
    code, output = await cli(
        "credentials", "add", "x", "--key-file", key_file, given=f"{PASSPHRASE}\n"
    )
    assert code == 2
    assert "encrypted: give its passphrase" in output
    code, output = await cli("credentials", "add", "x", "--key-file", key_file, "--password-prompt")
    assert code == 2
    code, output = await cli("credentials", "add", "bad name", "--password-prompt", given="p\np\n")
    assert code == 2
    assert "name" in output
    code, output = await cli("credentials", "add", "db", "--password-prompt", given="p\np\n")
    assert code == 2
    assert "exists" in output

    result = await run_cli(settings, "credentials", "list", "--json")
    assert result.exit_code == 0, result.output
    for secret in (PASSPHRASE, PASSWORD, SUDO, *_key_body(pem)):
        assert secret not in result.output
    assert "deploy" in result.output
    assert key.get_fingerprint("sha256") in result.output

    async with platform.db.session("t_default") as session:
        web = await session.scalar(select(Credential.id).where(Credential.name == "web"))
    assert web is not None
    used = await _open(platform, str(web))
    assert (used.private_key, used.passphrase, used.sudo_password) == (pem, PASSPHRASE, SUDO)
    assert used.username == "deploy"

    result = await run_cli(settings, "credentials", "rm", "web")
    assert result.exit_code == 0, result.output
    result = await run_cli(settings, "credentials", "rm", "web")
    assert result.exit_code == 2
    assert "no credential named 'web'" in result.output
    async with platform.db.session("t_default") as session:
        names = (await session.scalars(select(Credential.name))).all()
        actions = (
            await session.scalars(
                select(AuditEvent.action).where(AuditEvent.action.like("credential.%"))
            )
        ).all()
        count = await session.scalar(select(func.count()).select_from(VaultKey))
    assert names == ["db"]
    assert sorted(actions) == [
        "credential.create",
        "credential.create",
        "credential.delete",
        "credential.use",
    ]
    assert count == 1
