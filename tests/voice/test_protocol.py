"""The voice WebSocket protocol against a real server: sessions, tokens, control messages,
heartbeat, drops and resumes, expiry, hang-up."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.voice.conftest import SESSIONS, SHORT_TTL, StartVoice, VoiceServer, socket


async def test_create_answers_a_websocket_url_bound_to_the_call(voice: VoiceServer) -> None:
    created = await voice.create()
    session_id = created["session_id"]
    port = voice.url.rsplit(":", 1)[1]
    assert created["websocket_url"].startswith(
        f"ws://127.0.0.1:{port}/api/v1/voice/ws/{session_id}?token="
    )
    assert created["expires_in"] == 120
    uuid.UUID(created["agent_session_id"])
    async with voice.http as http:
        detail = await http.get(f"/api/v1/agent/sessions/{created['agent_session_id']}")
    assert detail.status_code == 200
    assert detail.json()["title"] == "Voice call"


async def test_ping_is_answered_and_the_server_pings(voice: VoiceServer) -> None:
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        await ws.send({"type": "ping"})
        assert (await ws.next("pong"))["type"] == "pong"
        ping = await ws.next("ping", limit=5)
        assert isinstance(ping["ts"], float)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "text"}', "bad_message"),
        ('{"type": "text", "text": "   "}', "bad_message"),
        ('{"type": "text", "text": "a\\u0000b"}', "bad_message"),
        (b"\x00" * 64_002, "frame_too_large"),
        (b"\x00" * 641, "bad_audio"),
        ("x" * 70_000, "frame_too_large"),
    ],
)
async def test_bad_frames_get_an_error_and_the_call_goes_on(
    voice: VoiceServer, frame: str | bytes, code: str
) -> None:
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        await ws.send(frame)
        error = await ws.next("error")
        assert error["code"] == code
        assert error["message"]
        await ws.send({"type": "ping"})
        await ws.next("pong")


async def _close_code(url: str) -> tuple[int | None, dict[str, object]]:
    async with connect(url) as ws:
        message = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return ws.close_code, message


async def test_tokens_are_checked(voice: VoiceServer) -> None:
    first, second = await voice.create(), await voice.create()
    base = first["websocket_url"].split("?")[0]
    token = first["websocket_url"].split("token=")[1]
    cases = [
        (base, 4401, "missing"),
        (f"{base}?token=garbage", 4401, "invalid"),
        (f"{base}?token={token[:-4]}AAAA", 4401, "invalid"),
        (second["websocket_url"].split("?")[0] + f"?token={token}", 4401, "another call"),
    ]
    for url, code, words in cases:
        close_code, message = await _close_code(url)
        assert close_code == code, url
        assert message["type"] == "error"
        assert words in str(message["message"])
    unknown = base.rsplit("/", 1)[0] + f"/{uuid.uuid4()}?token={token}"
    assert (await _close_code(unknown))[0] == 4401  # the token names another session


async def test_voice_needs_its_permission(voice: VoiceServer) -> None:
    async with voice.http as http:
        created = await http.post(
            "/api/v1/users",
            json={"username": "vera", "password": "vera-password-1", "role": "viewer"},
        )
        assert created.status_code == 201, created.text
        login = await http.post(
            "/api/v1/auth/login",
            json={"tenant": "default", "username": "vera", "password": "vera-password-1"},
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        refused = await http.post(SESSIONS, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"]["permission"] == "voice:use"


async def test_another_users_call_is_unknown(voice: VoiceServer) -> None:
    created = await voice.create()
    async with voice.http as http:
        await http.post(
            "/api/v1/users",
            json={"username": "olga", "password": "olga-password-1", "role": "operator"},
        )
        login = await http.post(
            "/api/v1/auth/login",
            json={"tenant": "default", "username": "olga", "password": "olga-password-1"},
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        path = f"{SESSIONS}/{created['session_id']}"
        assert (await http.post(f"{path}/reconnect", headers=headers)).status_code == 404
        assert (await http.delete(path, headers=headers)).status_code == 404
        foreign = await http.post(
            SESSIONS, json={"agent_session_id": created["agent_session_id"]}, headers=headers
        )
        assert foreign.status_code == 404
        assert (await http.post(f"{SESSIONS}/{uuid.uuid4()}/reconnect")).status_code == 404


async def _reconnect(http: httpx.AsyncClient, session_id: str) -> httpx.Response:
    """The call's reconnect, asked again while the server has not yet noticed the line drop
    (it refuses a connected call, and notices a close within moments)."""
    path = f"{SESSIONS}/{session_id}/reconnect"
    response = await http.post(path)
    for _ in range(50):
        if response.status_code == 200:
            break
        await asyncio.sleep(0.05)
        response = await http.post(path)
    return response


async def test_reconnect_is_refused_while_connected_and_resumes_after_a_drop(
    voice: VoiceServer,
) -> None:
    created = await voice.create()
    path = f"{SESSIONS}/{created['session_id']}/reconnect"
    async with voice.http as http:
        async with socket(created["websocket_url"]) as ws:
            await ws.send({"type": "ping"})
            await ws.next("pong")
            busy = await http.post(path)
            assert busy.status_code == 409
            assert busy.json()["error"]["code"] == "voice_session_connected"
        again = await _reconnect(http, created["session_id"])
        assert again.status_code == 200, again.text
        fresh = again.json()
    assert fresh["session_id"] == created["session_id"]
    assert fresh["websocket_url"] != created["websocket_url"]
    async with socket(fresh["websocket_url"]) as ws:
        resumed = await ws.next("session.resumed")
        assert resumed["session_id"] == created["session_id"]


async def test_a_second_connection_to_a_live_call_is_refused(voice: VoiceServer) -> None:
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        await ws.send({"type": "ping"})
        await ws.next("pong")
        code, message = await _close_code(created["websocket_url"])
        assert code == 4409
        assert message["code"] == "voice_session_connected"


async def _read_forever(ws: ClientConnection) -> None:
    while True:  # read, never answer
        await ws.recv()


async def test_a_silent_client_is_dropped_and_can_resume(voice: VoiceServer) -> None:
    """No traffic for heartbeat_timeout (3 s here): the server closes with 4408."""
    created = await voice.create()
    async with connect(created["websocket_url"]) as ws:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionClosed):
            await _read_forever(ws)
        assert ws.close_code == 4408
        assert loop.time() - started >= 2.9
    async with voice.http as http:
        again = await http.post(f"{SESSIONS}/{created['session_id']}/reconnect")
    assert again.status_code == 200


async def test_answering_pings_keeps_the_call(voice: VoiceServer) -> None:
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        loop = asyncio.get_running_loop()
        until = loop.time() + 6.0  # twice the heartbeat timeout
        while loop.time() < until:
            await ws.next("ping", limit=2)
            await ws.send({"type": "pong"})
        await ws.send({"type": "ping"})
        await ws.next("pong")


async def test_disconnected_sessions_expire(start_voice: StartVoice) -> None:
    voice = await start_voice(voice_session_ttl=SHORT_TTL)
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        await ws.send({"type": "ping"})
        await ws.next("pong")
    await asyncio.sleep(SHORT_TTL + 0.25 * 3)  # session_ttl, plus a few cleanup intervals
    assert await voice.gateway.registry.get(uuid.UUID(created["session_id"])) is None
    async with voice.http as http:
        gone = await http.post(f"{SESSIONS}/{created['session_id']}/reconnect")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


async def test_hang_up_ends_the_call(voice: VoiceServer) -> None:
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        await ws.send({"type": "ping"})
        await ws.next("pong")
        async with voice.http as http:
            ended = await http.delete(f"{SESSIONS}/{created['session_id']}")
            assert ended.status_code == 204
            message = await ws.next("session.ended")
            assert message["reason"] == "hangup"
            with pytest.raises(ConnectionClosed):
                await ws.next("never")
            assert ws.ws.close_code == 4000
            again = await http.post(f"{SESSIONS}/{created['session_id']}/reconnect")
            assert again.status_code == 404
            audit = await http.get(
                "/api/v1/audit/events", params={"resource_type": "voice_session"}
            )
    actions = [e["action"] for e in audit.json()["items"]]
    assert "voice.session.created" in actions
    assert "voice.session.ended" in actions


async def test_typed_question_gets_a_spoken_answer_and_history_survives_a_resume(
    voice: VoiceServer,
) -> None:
    created = await voice.create()
    async with socket(created["websocket_url"]) as ws:
        await ws.send({"type": "text", "text": "check disk usage on localhost"})
        chunks = []
        while True:
            message = await ws.next("agent.text")
            chunks.append(message["text"])
            if message["final"]:
                break
        answer = " ".join(chunks)
        assert "no language model is configured" in answer.lower()
        assert "/" in answer  # a filesystem from df on localhost
        deadline = asyncio.get_running_loop().time() + 10
        while len(ws.audio) < 16_000 and asyncio.get_running_loop().time() < deadline:
            await ws.send({"type": "ping"})
            await ws.next("pong")
        assert len(ws.audio) >= 16_000  # at least half a second of speech
        assert any(ws.audio[i] for i in range(0, len(ws.audio), 2))
    async with voice.http as http:
        again = await _reconnect(http, created["session_id"])
    async with socket(again.json()["websocket_url"]) as ws:
        await ws.next("session.resumed")
        await ws.send({"type": "text", "text": "how much memory is free on localhost"})
        while not (await ws.next("agent.text"))["final"]:
            pass
    async with voice.http as http:
        detail = await http.get(f"/api/v1/agent/sessions/{created['agent_session_id']}")
    questions = [m["content"] for m in detail.json()["messages"] if m["role"] == "user"]
    assert questions == ["check disk usage on localhost", "how much memory is free on localhost"]


async def test_reconnect_body_and_ids_are_validated(voice: VoiceServer) -> None:
    async with voice.http as http:
        bad = await http.post(SESSIONS, json={"agent_session_id": "nope"})
        assert bad.status_code == 422
        assert "error" in bad.json()
        extra = await http.post(SESSIONS, json={"agent_session_id": None, "x": 1})
        assert extra.status_code == 422
        path = await http.post(f"{SESSIONS}/not-a-uuid/reconnect")
        assert path.status_code == 422


async def test_the_websocket_path_needs_a_uuid(voice: VoiceServer) -> None:
    url = voice.url.replace("http", "ws") + "/api/v1/voice/ws/not-a-uuid?token=x"
    with pytest.raises(Exception):  # noqa: B017,PT011 - refused during the handshake or at once
        async with connect(url) as ws:
            await ws.recv()


async def test_start_voice_accepts_overrides(start_voice: StartVoice) -> None:
    server = await start_voice(voice_token_ttl=30)
    created = await server.create()
    assert created["expires_in"] == 30
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_an_echo_line_sends_the_audio_back(start_voice: StartVoice) -> None:
    server = await start_voice(voice_echo=True)
    created = await server.create()
    sent = bytes(range(256)) * 10  # 2560 bytes: four 20 ms frames
    async with socket(created["websocket_url"]) as ws:
        for i in range(0, len(sent), 640):
            await ws.send(sent[i : i + 640])
        async with asyncio.timeout(10):
            while len(ws.audio) < len(sent):
                await ws.send({"type": "ping"})
                await ws.next("pong")
    assert bytes(ws.audio[: len(sent)]) == sent


async def test_an_answer_that_came_while_the_line_was_down_is_delivered_on_resume(
    voice: VoiceServer,
) -> None:
    created = await voice.create()
    async with voice.http as http:
        async with socket(created["websocket_url"]) as ws:
            await ws.send({"type": "text", "text": "check disk usage on localhost"})
        # the line is down; the agent answers anyway
        path = f"/api/v1/agent/sessions/{created['agent_session_id']}"
        async with asyncio.timeout(30):
            while True:
                detail = (await http.get(path)).json()
                if detail["status"] == "idle" and detail["turns"] == 1:
                    break
                await asyncio.sleep(0.05)
        again = await _reconnect(http, created["session_id"])
    async with socket(again.json()["websocket_url"]) as ws:
        await ws.next("session.resumed")
        caught_up = await ws.next("agent.text")
        assert "no language model is configured" in caught_up["text"].lower()
        assert (await ws.next("agent.text"))["final"] is True
        async with asyncio.timeout(10):
            while len(ws.audio) < 16_000:
                await ws.send({"type": "ping"})
                await ws.next("pong")
