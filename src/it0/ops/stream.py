"""A task's live events, read from the database: any API replica can serve any task.

The runner writes output, host progress and status changes to ``task_output`` in short
batches; the stream replays what is there after the client's last event id and then
follows, until the task has reached a final state and everything has been sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from fastapi.sse import ServerSentEvent
from sqlalchemy import select

from it0.ops.models import Task, TaskOutput
from it0.ops.schemas import FINAL_STATUSES
from it0.platform import Platform

POLL_SECONDS = 0.25
BATCH = 500


async def task_events(
    p: Platform, schema: str, task_id: uuid.UUID, after: int = 0
) -> AsyncIterator[ServerSentEvent]:
    last_status: str | None = None
    while True:
        async with p.db.session(schema) as session:
            status = await session.scalar(select(Task.status).where(Task.id == task_id))
            rows = (
                await session.scalars(
                    select(TaskOutput)
                    .where(TaskOutput.task_id == task_id, TaskOutput.seq > after)
                    .order_by(TaskOutput.seq)
                    .limit(BATCH)
                )
            ).all()
        if status is None:
            return
        if status != last_status and not rows:
            yield ServerSentEvent(event="task", data={"status": status})
            last_status = status
        for row in rows:
            after = row.seq
            if row.kind == "status":
                last_status = row.data.get("status")
            yield ServerSentEvent(event=row.kind, id=str(row.seq), data=row.data)
        if len(rows) == BATCH:
            continue
        if status in FINAL_STATUSES and not rows:
            yield ServerSentEvent(event="done", data={"status": status})
            return
        await asyncio.sleep(POLL_SECONDS)
