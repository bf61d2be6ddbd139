"""Property-based fuzzing of every API operation from the app's own OpenAPI document.

Schemathesis generates valid and invalid requests per operation and sends them in-process
(ASGI) to an app whose lifespan runs on schemathesis' event-loop thread, authenticated as
the bootstrap admin. Whatever it sends, the server must answer without a 5xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi

from it0.app import create_app
from it0.audit import install_audit_guard
from it0.auth.bootstrap import bootstrap
from it0.platform import Platform
from tests.conftest import ADMIN_PASSWORD, make_settings

MAX_EXAMPLES = 30


class AdminAuth:
    """The admin's bearer token, logged in again after a fuzzed logout revoked it."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._token: str | None = None

    def headers(self) -> dict[str, str]:
        if self._token is None:
            with asgi.get_client(self._app) as client:
                response = client.post(
                    "/api/v1/auth/login",
                    json={"tenant": "default", "username": "admin", "password": ADMIN_PASSWORD},
                )
            assert response.status_code == 200, response.text
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def forget(self) -> None:
        self._token = None


async def _bootstrap(data_dir: Path, database_url: str | None) -> None:
    install_audit_guard()
    p = Platform.create(make_settings(data_dir, database_url))
    try:
        await bootstrap(p)
    finally:
        await p.close()


@pytest.fixture
def fuzz_app(tmp_path: Path, database_url: str | None) -> Iterator[Any]:
    """An app on a bootstrapped data dir (SQLite or a fresh PostgreSQL database)."""
    data_dir = tmp_path / "data"
    asyncio.run(_bootstrap(data_dir, database_url))
    # fuzzed logins with random passwords must not lock the admin (or the test client's
    # address) out for the rest of the run
    config = make_settings(
        data_dir, database_url, login_max_failures=10**6, login_max_failures_per_ip=10**6
    )
    app = create_app(config)
    try:
        yield app
    finally:
        # end the lifespan schemathesis started on its loop thread: closes the engine
        asgi.shutdown_lifespans()


@pytest.fixture
def fuzz_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@pytest.fixture
def admin_auth(fuzz_app: Any) -> AdminAuth:
    return AdminAuth(fuzz_app)


def _operations(fuzz_schema: Any) -> list[Any]:
    operations = []
    for result in fuzz_schema.get_all_operations():
        if not isinstance(result, Ok):
            pytest.fail(f"the OpenAPI document has an unusable operation: {result.err()}")
        operations.append(result.ok())
    return operations


def _fuzz(operation: Any, auth: AdminAuth) -> str | None:
    """Run one operation's examples; the first server error found (shrunk), or None."""
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # nothing written under .hypothesis/
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.target, Phase.shrink],
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(headers=auth.headers())
        if operation.path == "/api/v1/auth/logout" and response.status_code == 204:
            auth.forget()
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text

    try:
        run()
    except Exception as exc:  # every failure is reported together below
        return f"{operation.label}: {exc}"
    return None


def test_no_server_errors(fuzz_schema: Any, admin_auth: AdminAuth) -> None:
    operations = _operations(fuzz_schema)
    assert len(operations) >= 15, [op.label for op in operations]
    failures = [f for op in operations if (f := _fuzz(op, admin_auth)) is not None]
    assert not failures, "\n\n".join(failures)
