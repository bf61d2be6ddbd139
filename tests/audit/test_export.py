"""``it0 audit export``: the whole chain as JSON Lines that can be re-verified elsewhere."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from it0.audit import Actor, AuditContext
from it0.audit.chain import GENESIS, canonical_json
from it0.core.settings import Settings
from it0.platform import Platform
from tests.audit.helpers import SCHEMA, TENANT, all_events, append, run_cli


async def test_export_writes_every_event_in_order(
    platform: Platform, settings: Settings, tmp_path: Path
) -> None:
    await append(platform, 6)
    async with platform.db.session(SCHEMA, write=True) as session:
        await platform.audit.record(
            session, TENANT, AuditContext(Actor.system("cron")), "user.password", "user", "u1",
            {"username": "ünïcode", "password": "hunter2", "tags": ["a", "b"]},
        )  # fmt: skip
    events = await all_events(platform)

    out = tmp_path / "audit.jsonl"
    result = await run_cli(settings, "audit", "export", "--tenant", "default", "-o", out)
    assert result.exit_code == 0, result.output
    assert f"exported {len(events)} events" in result.stderr

    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(events)
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == list(range(1, len(events) + 1))
    for row, event in zip(rows, events, strict=True):
        assert row["id"] == str(event.id)
        assert row["action"] == event.action
        assert row["hash"] == event.hash
        assert row["prev_hash"] == event.prev_hash
        assert isinstance(row["summary"], dict)
        assert json.loads(event.summary) == row["summary"]
    assert rows[-1]["summary"] == {
        "username": "ünïcode",
        "password": "[redacted]",
        "tags": ["a", "b"],
    }
    assert rows[-1]["actor_type"] == "system"

    # the file alone is enough to recompute the chain
    prev = GENESIS
    for row in rows:
        fields = {k: v for k, v in row.items() if k not in ("hash", "prev_hash")}
        fields["summary"] = canonical_json(row["summary"])
        assert row["prev_hash"] == prev
        digest = hashlib.sha256((prev + canonical_json(fields)).encode()).hexdigest()
        assert digest == row["hash"], row["seq"]
        prev = row["hash"]


async def test_export_to_stdout(platform: Platform, settings: Settings) -> None:
    await append(platform, 2)
    result = await run_cli(settings, "audit", "export")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [e.seq for e in await all_events(platform)]


async def test_export_of_an_unknown_tenant_fails(platform: Platform, settings: Settings) -> None:
    result = await run_cli(settings, "audit", "export", "--tenant", "nope")
    assert result.exit_code == 2
    assert "unknown tenant" in result.stderr
