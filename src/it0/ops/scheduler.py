"""The scheduler: standing-order ticks, approval expiry and the sweep of dead workers' tasks.

Several scheduler processes may run against one database: each tick selects due rows with
``FOR UPDATE SKIP LOCKED`` and moves them on (next run time, expired status) in the same
transaction that acts on them, so a tick fires exactly once. On SQLite write transactions
are serialized (``BEGIN IMMEDIATE``), which gives the same guarantee for one host.

Time comes from an injectable clock, so tests can jump over a night of downtime.
"""

from __future__ import annotations

import asyncio
import logging
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from croniter import croniter
from sqlalchemy import select

from it0.audit import Actor, AuditContext
from it0.auth.models import Tenant
from it0.auth.tokens import TenantRef
from it0.core.bus import Message
from it0.core.clock import utcnow
from it0.core.errors import IT0Error
from it0.inventory.service import TenantRecorder
from it0.ops.approvals import expire
from it0.ops.models import Approval, StandingOrder, Task
from it0.ops.orders import fire, next_cron
from it0.ops.runner import requeue, sweep
from it0.platform import Platform

log = logging.getLogger(__name__)

SCHEDULER = AuditContext(Actor.system("scheduler"))
EVENT_TOPICS = ("alert.fired",)  # what event-triggered orders may listen to
ORDERS_GROUP = "orders"
MAX_COUNTED = 10000  # missed ticks are counted up to this many (a report, not a loop)

Clock = Callable[[], datetime]


@dataclass
class TickReport:
    expired: int = 0
    fired: int = 0
    skipped: int = 0
    interrupted: int = 0
    requeued: int = 0
    orders_expired: int = 0
    errors: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, p: Platform, clock: Clock = utcnow) -> None:
        self.p = p
        self.clock = clock

    async def loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.p.settings.scheduler_interval)

    async def tenants(self) -> list[TenantRef]:
        async with self.p.db.session() as session:
            rows = (await session.execute(select(Tenant.id, Tenant.slug, Tenant.schema_name))).all()
        return [TenantRef(i, slug, schema) for i, slug, schema in rows]

    async def tick(self, now: datetime | None = None) -> TickReport:
        report = TickReport()
        now = now or self.clock()
        for tenant in await self.tenants():
            # each duty on its own: one failing must not starve the others (or other tenants)
            for duty in (self.expire_approvals, self.run_orders, self.sweep, self.requeue):
                try:
                    await duty(tenant, now, report)
                except Exception as exc:
                    log.exception("scheduler %s for tenant %s failed", duty.__name__, tenant.slug)
                    report.errors.append(f"{tenant.slug}: {duty.__name__}: {type(exc).__name__}")
        return report

    async def sweep(self, tenant: TenantRef, now: datetime, report: TickReport) -> None:
        # leases are renewed in wall-clock time by the workers: judge them by it
        report.interrupted += await sweep(self.p, tenant, utcnow(), SCHEDULER)

    async def requeue(self, tenant: TenantRef, now: datetime, report: TickReport) -> None:
        report.requeued += await requeue(self.p, tenant, utcnow())

    async def expire_approvals(self, tenant: TenantRef, now: datetime, report: TickReport) -> None:
        async with self.p.db.session(tenant.schema, write=True) as session:
            due = (
                await session.scalars(
                    select(Approval)
                    .where(Approval.status == "pending", Approval.expires_at <= now)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            audit = TenantRecorder(self.p, session, tenant.pair, SCHEDULER)
            for approval in due:
                task = await session.get(Task, approval.task_id)
                assert task is not None
                await expire(audit, approval, task, now)
        report.expired += len(due)

    async def run_orders(self, tenant: TenantRef, now: datetime, report: TickReport) -> None:
        async with self.p.db.session(tenant.schema, write=True) as session:
            due = (
                await session.scalars(
                    select(StandingOrder)
                    .where(
                        StandingOrder.status == "active",
                        (StandingOrder.next_run_at <= now) | (StandingOrder.expires_at <= now),
                    )
                    .order_by(StandingOrder.number)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            audit = TenantRecorder(self.p, session, tenant.pair, SCHEDULER)
            for order in due:
                if order.expires_at <= now:
                    order.status, order.next_run_at = "expired", None
                    order.status_reason = "expired"
                    await session.flush()
                    await audit.record("order.expired", "standing_order", order.id, {})
                    report.orders_expired += 1
                    continue
                await self._tick_order(audit, order, now, report)

    async def _tick_order(
        self, audit: TenantRecorder, order: StandingOrder, now: datetime, report: TickReport
    ) -> None:
        assert order.trigger is not None
        assert order.next_run_at is not None
        scheduled = order.next_run_at
        try:
            missed = _count_due(order.trigger, scheduled, now)
            order.next_run_at = next_cron(order.trigger, now, previous=scheduled)
        except ValueError as exc:  # the expression has no further time (croniter gives up)
            order.status, order.next_run_at = "paused", None
            order.status_reason = f"paused: its schedule has no next run ({exc})"
            await audit.session.flush()
            await audit.record("order.paused", "standing_order", order.id, {"reason": str(exc)})
            report.errors.append(f"order #{order.number}: no next run")
            return
        late = (now - scheduled).total_seconds()
        on_time = missed == 1 and late <= self.p.settings.order_misfire_grace
        if not on_time:
            await audit.record(
                "order.missed",
                "standing_order",
                order.id,
                {
                    "missed": missed,
                    "since": scheduled.isoformat(),
                    "policy": order.missed_runs,
                    "next_run_at": order.next_run_at.isoformat(),
                },
            )
            if order.missed_runs == "skip":
                report.skipped += 1
                await audit.session.flush()
                return
        why = "cron tick" if on_time else f"run once after {missed} missed tick(s)"
        try:  # fire() fails, if at all, before it writes anything
            await fire(
                audit,
                order,
                why=why,
                settings_expiry=self.p.settings.approval_expiry_minutes,
                now=now,
            )
            report.fired += 1
        except IT0Error as exc:  # e.g. no host matches any more: recorded, the tick moves on
            await audit.record(
                "order.run_failed",
                "standing_order",
                order.id,
                {"error": exc.code, "message": exc.message},
            )
            report.errors.append(f"order #{order.number}: {exc.code}")
        await audit.session.flush()

    # --- event triggers -------------------------------------------------------------------

    def subscribe_events(self) -> None:
        for topic in EVENT_TOPICS:
            self.p.bus.subscribe(topic, ORDERS_GROUP, self.on_event)

    async def on_event(self, message: Message) -> None:
        """Fire every active event order whose topic and labels match (once per event)."""
        slug = message.payload.get("tenant")
        labels = message.payload.get("labels") or {}
        if not isinstance(labels, dict):
            return
        tenant = next((t for t in await self.tenants() if t.slug == slug), None)
        if tenant is None:
            return
        now = self.clock()
        async with self.p.db.session(tenant.schema, write=True) as session:
            active = select(StandingOrder).where(
                StandingOrder.status == "active", StandingOrder.expires_at > now
            )
            matching = [
                order.id
                for order in (await session.scalars(active)).all()
                if _event_matches(order.trigger, message.topic, labels)
            ]
            if not matching:
                return
            # every matching order locked before the first audit event (which takes the
            # chain's lock), in one order: a request holding one of them cannot deadlock us
            orders = (
                await session.scalars(
                    active.where(StandingOrder.id.in_(matching))
                    .order_by(StandingOrder.number)
                    .with_for_update()
                    .execution_options(populate_existing=True)  # as they are once locked
                )
            ).all()
            audit = TenantRecorder(self.p, session, tenant.pair, SCHEDULER)
            for order in orders:
                if not _event_matches(order.trigger, message.topic, labels):
                    continue  # changed meanwhile
                try:  # fire() fails, if at all, before it writes anything
                    await fire(
                        audit,
                        order,
                        why=f"event {message.topic}",
                        settings_expiry=self.p.settings.approval_expiry_minutes,
                        labels={str(k): str(v) for k, v in labels.items()},
                        now=now,
                    )
                except IT0Error as exc:
                    await audit.record(
                        "order.run_failed",
                        "standing_order",
                        order.id,
                        {"error": exc.code, "message": exc.message, "event": message.topic},
                    )


def _event_matches(
    trigger: Mapping[str, Any] | None, topic: str, labels: Mapping[str, Any]
) -> bool:
    if not trigger or trigger.get("type") != "event" or trigger.get("topic") != topic:
        return False
    return all(str(labels.get(k)) == v for k, v in (trigger.get("labels") or {}).items())


def _count_due(trigger: Mapping[str, Any], first: datetime, now: datetime) -> int:
    """How many scheduled times fell in [first, now] (``first`` is one of them)."""
    zone = zoneinfo.ZoneInfo(trigger.get("timezone") or "UTC")
    times = croniter(trigger["cron"], first.astimezone(zone))
    count = 1
    while count < MAX_COUNTED:
        nxt: datetime = times.get_next(datetime)
        if nxt > now:
            break
        count += 1
    return count
