import httpx


async def test_login_and_me(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get("/api/v1/auth/me", headers=admin)
    assert response.status_code == 200
    assert response.json()["role"] == "owner"
