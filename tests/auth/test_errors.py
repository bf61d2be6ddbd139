"""Every error is a JSON body ``{"error": {code, message, details}}``; no tracebacks, ever."""

from __future__ import annotations

import logging

import httpx
import pytest

from it0.auth import service
from tests.auth.helpers import API, PASSWORD, code_of, error_of
from tests.conftest import ADMIN_PASSWORD


async def test_validation_error_names_the_field(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/users", json={"username": "not valid!", "password": PASSWORD}, headers=admin
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert error["message"] == "invalid value for username"
    [field] = error["details"]["fields"]
    assert field["field"] == "username"
    assert field["type"] == "string_pattern_mismatch"
    assert field["message"]


async def test_several_invalid_fields_are_all_reported(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/users",
        json={"username": "", "password": "short", "role": "NOT A ROLE", "surprise": 1},
        headers=admin,
    )
    assert response.status_code == 422
    fields = {f["field"] for f in error_of(response)["details"]["fields"]}
    assert fields == {"username", "password", "role", "surprise"}


async def test_missing_body_and_wrong_types(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(f"{API}/users", headers=admin)
    assert response.status_code == 422
    assert code_of(response) == "validation_error"
    response = await client.post(f"{API}/users", json=["a", "list"], headers=admin)
    assert response.status_code == 422
    assert code_of(response) == "validation_error"
    response = await client.patch(
        f"{API}/users/{'0' * 8}-0000-0000-0000-{'0' * 12}",
        json={"is_active": "maybe"},
        headers=admin,
    )
    assert response.status_code == 422
    assert [f["field"] for f in error_of(response)["details"]["fields"]] == ["is_active"]


async def test_query_validation(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get(f"{API}/audit/events", params={"limit": "0"}, headers=admin)
    assert response.status_code == 422
    assert [f["field"] for f in error_of(response)["details"]["fields"]] == ["query.limit"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"tenant": "default", "username": "admin", "password": ',
        b"",
        b"null",
        b'"a string"',
        b"{}{}",
    ],
)
async def test_malformed_json_is_422_json(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        f"{API}/auth/login", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert code_of(response) == "validation_error"


async def test_body_that_is_not_even_text_is_a_json_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/login", content=b"\xff\xfe\x00", headers={"Content-Type": "application/json"}
    )
    assert response.status_code in {400, 422}
    assert error_of(response)["code"] in {"http_error", "validation_error"}


async def test_malformed_json_on_an_authenticated_route(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/users",
        content=b"{'single': 'quotes'}",
        headers={**admin, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert code_of(response) == "validation_error"


async def test_unknown_route_is_404_json(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for path in ("/nope", f"{API}/nope", f"{API}/users/a/b/c", "/api/v2/auth/login"):
        for headers in ({}, admin):
            response = await client.get(path, headers=headers)
            assert response.status_code == 404, path
            error = error_of(response)
            assert error["code"] == "not_found"
            assert error["details"] == {}


async def test_wrong_method_is_405_json(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for method, path in (
        ("DELETE", f"{API}/auth/me"),
        ("GET", f"{API}/auth/login"),
        ("PUT", f"{API}/users"),
        ("POST", "/healthz"),
    ):
        response = await client.request(method, path, headers=admin)
        assert response.status_code == 405, (method, path)
        assert code_of(response) == "method_not_allowed"
        assert response.headers["allow"]


async def test_unexpected_exception_is_a_500_without_details(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals: postgres://user:hunter2@db")

    monkeypatch.setattr(service, "list_tenants", boom)
    caplog.set_level(logging.ERROR)
    response = await client.get(f"{API}/tenants", headers=admin)
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    # the details go to the log instead
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


async def test_error_bodies_never_carry_tracebacks(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    requests: list[tuple[str, str, dict[str, str], object]] = [
        ("GET", f"{API}/users", {}, None),
        ("GET", f"{API}/users", {"Authorization": "Bearer \x7f"}, None),
        ("GET", f"{API}/users/00000000-0000-0000-0000-000000000000", admin, None),
        ("GET", f"{API}/users/%00", admin, None),
        ("GET", f"{API}/audit/events?since=not-a-date", admin, None),
        ("GET", f"{API}/audit/events?cursor=-1", admin, None),
        ("GET", f"{API}/audit/events?limit=99999999999999999999999", admin, None),
        ("POST", f"{API}/auth/login", {}, {"tenant": "x" * 41, "username": "a", "password": "b"}),
        (
            "POST",
            f"{API}/auth/login",
            {},
            {"tenant": "default", "username": "admin", "password": "p" * 5000},
        ),
        ("POST", f"{API}/auth/refresh", {}, {"refresh_token": "x" * 600}),
        ("POST", f"{API}/tenants", admin, {"slug": "Bad Slug"}),
        ("POST", f"{API}/tenants", admin, {"slug": "default"}),
        ("POST", f"{API}/roles", admin, {"name": "r", "permissions": ["x"] * 101}),
        ("DELETE", f"{API}/roles/{'x' * 300}", admin, None),
        ("DELETE", f"{API}/api-keys/not-a-uuid", admin, None),
    ]
    for method, path, headers, body in requests:
        response = await client.request(method, path, headers=headers, json=body)
        assert 400 <= response.status_code < 500, (method, path, response.text)
        error_of(response)  # checks the envelope and the absence of "Traceback"
    # the login above with the admin's name but a wrong password still let admin in
    response = await client.post(
        f"{API}/auth/login",
        json={"tenant": "default", "username": "admin", "password": ADMIN_PASSWORD},
    )
    assert response.status_code == 200


async def test_responses_carry_a_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert len(response.headers["x-request-id"]) >= 8
    response = await client.get("/healthz", headers={"X-Request-ID": "abcdef0123456789"})
    assert response.headers["x-request-id"] == "abcdef0123456789"
    response = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["x-request-id"] != "bad id with spaces"


async def test_nul_characters_are_refused_everywhere(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """PostgreSQL cannot store NUL in text: bodies, paths and queries get a 422, never a 500."""
    response = await client.post(
        f"{API}/tenants", json={"slug": "nul", "name": "a\x00b"}, headers=admin
    )
    assert response.status_code == 422
    assert code_of(response) == "validation_error"
    response = await client.post(
        f"{API}/auth/login", json={"tenant": "default", "username": "ad\x00min", "password": "x"}
    )
    assert response.status_code == 422
    response = await client.delete(f"{API}/roles/a%00b", headers=admin)
    assert response.status_code == 422
    assert code_of(response) == "validation_error"
    response = await client.get(f"{API}/audit/events?actor=a%00", headers=admin)
    assert response.status_code == 422
