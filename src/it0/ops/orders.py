"""Standing orders: pre-authorized work inside a scope, approved by a second person.

A standing order names a scope (a selector, command templates with typed parameters, the
highest risk that runs without a fresh approval), a rate limit, an expiry and optionally a
trigger (cron or a bus event). A request inside an active order's scope runs unattended
and is audited as authorized by that order; anything outside becomes a normal approval.
Creating, changing or re-enabling an order puts it back to ``pending_approval``.
"""

from __future__ import annotations

import functools
import re
import string
import uuid
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.audit import Actor
from it0.auth.tokens import Principal
from it0.core.clock import utcnow
from it0.inventory.models import Server
from it0.inventory.selectors import parse_selector, resolve
from it0.inventory.service import Recorder
from it0.ops.errors import FourEyes, InvalidOrder, InvalidState, OpsNotFound, RunWaiting
from it0.ops.models import StandingOrder, Task
from it0.ops.policy import Risk
from it0.ops.schemas import (
    CommandTemplate,
    OrderCreate,
    OrderPublic,
    OrderUpdate,
    ParamSpec,
    TaskCreate,
)
from it0.ops.tasks import Requester, _by_ref, submit

# a parameter's value is one plain word: never quotes, spaces, or shell syntax
_VALUE_SET = frozenset(string.ascii_letters + string.digits + "_.:@%+=,/-")
SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:@%+=,/-]+")
MAX_MATCHED = 4096  # longer command lines are never inside a standing order's scope
MAX_VALUE = 256
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RANK = {Risk.READ_ONLY: 0, Risk.LOW: 1, Risk.HIGH: 2, Risk.CRITICAL: 3}


# --- templates ------------------------------------------------------------------------------


def _value_ok(spec: ParamSpec, value: str) -> bool:
    if len(value) > MAX_VALUE or not SAFE_VALUE.fullmatch(value):
        return False
    if spec.type == "enum":
        return value in (spec.values or [])
    if spec.type == "int":
        if not re.fullmatch(r"-?[0-9]{1,18}", value):
            return False
        number = int(value)
        return (spec.min is None or number >= spec.min) and (spec.max is None or number <= spec.max)
    return spec.pattern is None or re.fullmatch(spec.pattern, value) is not None


def _template_regex(template: CommandTemplate) -> re.Pattern[str]:
    return _compiled(template.template)


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> re.Pattern[str]:
    """A placeholder matches a plain word that cannot contain the character following it in
    the template, so matching never backtracks (templates refuse adjacent placeholders)."""
    parts, last = [], 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[last : match.start()]))
        allowed = _VALUE_SET - set(text[match.end() : match.end() + 1])
        chars = "".join(re.escape(c) for c in sorted(allowed))
        parts.append(f"(?P<{match.group(1)}>[{chars}]+)")
        last = match.end()
    parts.append(re.escape(text[last:]))
    return re.compile("".join(parts))


def match_template(template: CommandTemplate, command: str) -> dict[str, str] | None:
    """The parameters with which ``template`` renders exactly ``command``, if any."""
    if len(command) > MAX_MATCHED:
        return None
    found = _template_regex(template).fullmatch(command)
    if found is None:
        return None
    values = found.groupdict()
    for name, value in values.items():
        if not _value_ok(template.params[name], value):
            return None
    return values


def render(template: CommandTemplate, params: Mapping[str, str]) -> str:
    """The command for ``params``; every value is checked against its type first."""
    for name, spec in template.params.items():
        value = params.get(name)
        if value is None or not _value_ok(spec, value):
            raise InvalidOrder(
                f"parameter {name!r} is missing or not a valid {spec.type}",
                details={"param": name},
            )
    return _PLACEHOLDER.sub(lambda m: params[m.group(1)], template.template)


def _check_template(index: int, template: CommandTemplate) -> None:
    names = _PLACEHOLDER.findall(template.template)
    where = {"field": f"scope.commands[{index}]"}
    if re.search(r"\}\{", template.template):
        raise InvalidOrder("two placeholders may not touch: put a character between", details=where)
    if len(set(names)) != len(names):
        raise InvalidOrder("a placeholder appears twice in one template", details=where)
    if set(names) != set(template.params):
        raise InvalidOrder(
            "the template's placeholders and its params must name the same parameters",
            details={**where, "placeholders": names, "params": sorted(template.params)},
        )
    for name, spec in template.params.items():
        if spec.type == "enum" and not spec.values:
            raise InvalidOrder(f"enum parameter {name!r} needs values", details=where)
        if spec.type == "enum" and not all(SAFE_VALUE.fullmatch(v) for v in spec.values or []):
            raise InvalidOrder(f"enum parameter {name!r} has a value that is not a plain word")
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                raise InvalidOrder(
                    f"parameter {name!r}: bad pattern: {exc}", details=where
                ) from exc


# --- validation -----------------------------------------------------------------------------


def next_cron(
    trigger: Mapping[str, Any], after: datetime, previous: datetime | None = None
) -> datetime:
    """The next scheduled time after ``after``, in UTC. On the night clocks fall back a
    local time happens twice; a tick at the wall-clock time of ``previous`` is not repeated."""
    zone = zoneinfo.ZoneInfo(trigger.get("timezone") or "UTC")
    times = croniter(trigger["cron"], after.astimezone(zone))
    nxt: datetime = times.get_next(datetime)
    if previous is not None:
        seen = previous.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        while nxt.replace(tzinfo=None, second=0, microsecond=0) == seen:
            nxt = times.get_next(datetime)
    return nxt.astimezone(UTC)


def _validate(body: OrderCreate | OrderUpdate, now: datetime) -> None:
    if body.scope is not None:
        parse_selector(body.scope.targets)
        for i, template in enumerate(body.scope.commands):
            _check_template(i, template)
    trigger = body.trigger
    if trigger is not None and trigger.type == "cron":
        if not croniter.is_valid(trigger.cron):
            raise InvalidOrder(
                f"invalid cron expression {trigger.cron!r}", details={"field": "trigger.cron"}
            )
        try:
            zoneinfo.ZoneInfo(trigger.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidOrder(
                f"unknown time zone {trigger.timezone!r}", details={"field": "trigger.timezone"}
            ) from exc
        try:
            next_cron(trigger.model_dump(), now)
        except ValueError as exc:  # e.g. "0 0 31 2 *": valid syntax, never fires
            raise InvalidOrder(
                f"cron expression {trigger.cron!r} never fires", details={"field": "trigger.cron"}
            ) from exc
    if body.expires_at is not None and body.expires_at.astimezone(UTC) <= now:
        raise InvalidOrder("expires_at must be in the future", details={"field": "expires_at"})


def _check_action(order: StandingOrder) -> None:
    if order.trigger is not None and order.action is None:
        raise InvalidOrder("an order with a trigger needs an action", details={"field": "action"})
    if order.action is None:
        return
    commands = order.scope["commands"]
    index = order.action.get("command", 0)
    if index >= len(commands):
        raise InvalidOrder("action.command is not an index of scope.commands")
    template = CommandTemplate.model_validate(commands[index])
    params = dict(order.action.get("params", {}))
    dynamic = {k for k, v in params.items() if v.startswith("$labels.")}
    if dynamic and (order.trigger or {}).get("type") != "event":
        raise InvalidOrder("$labels.* values need an event trigger", details={"field": "action"})
    for name, spec in template.params.items():
        if name not in dynamic and not _value_ok(spec, params.get(name, "")):
            raise InvalidOrder(
                f"action parameter {name!r} is missing or not a valid {spec.type}",
                details={"field": f"action.params.{name}"},
            )


# --- lifecycle ------------------------------------------------------------------------------


async def find_order(session: AsyncSession, ref: str) -> StandingOrder:
    order: StandingOrder | None = None
    if re.fullmatch(r"[0-9]{1,9}", ref):
        order = await session.scalar(select(StandingOrder).where(StandingOrder.number == int(ref)))
    if order is None:
        order = await _by_ref(session, StandingOrder, ref)
    if order is None:
        order = await session.scalar(select(StandingOrder).where(StandingOrder.name == ref))
    if order is None:
        raise OpsNotFound(f"standing order {ref!r} not found")
    return order


def _definition(order: StandingOrder) -> dict[str, Any]:
    return {
        "name": order.name,
        "version": order.version,
        "trigger": order.trigger,
        "scope": order.scope,
        "action": order.action,
        "rate_limit": order.rate_limit,
        "expires_at": order.expires_at.isoformat(),
        "missed_runs": order.missed_runs,
        "pause_after_failures": order.pause_after_failures,
    }


async def create_order(
    audit: Recorder, owner: Principal, body: OrderCreate, now: datetime | None = None
) -> StandingOrder:
    now = now or utcnow()
    _validate(body, now)
    session = audit.session
    if await session.scalar(select(StandingOrder.id).where(StandingOrder.name == body.name)):
        raise InvalidState(
            f"a standing order named {body.name!r} exists", details={"field": "name"}
        )
    number = int(
        await session.scalar(select(func.coalesce(func.max(StandingOrder.number), 0))) or 0
    )
    order = StandingOrder(
        number=number + 1,
        name=body.name,
        description=body.description,
        owner_id=owner.user_id,
        owner_name=owner.username,
        changed_by=owner.user_id,
        status="pending_approval",
        trigger=body.trigger.model_dump() if body.trigger else None,
        scope=body.scope.model_dump(),
        action=body.action.model_dump() if body.action else None,
        rate_limit=body.rate_limit.model_dump(),
        expires_at=body.expires_at.astimezone(UTC),
        missed_runs=body.missed_runs,
        pause_after_failures=body.pause_after_failures,
        consecutive_failures=0,
        version=1,
        created_at=now,
        updated_at=now,
    )
    _check_action(order)
    session.add(order)
    await session.flush()
    await audit.record(
        "order.created", "standing_order", order.id, {"number": order.number, **_definition(order)}
    )
    return order


async def update_order(
    audit: Recorder,
    order: StandingOrder,
    editor: Principal,
    body: OrderUpdate,
    now: datetime | None = None,
) -> StandingOrder:
    """Any change is a new version that needs approval again, by neither its owner nor its
    editor, before it runs."""
    now = now or utcnow()
    await audit.session.refresh(order, with_for_update=True)
    _validate(body, now)
    if order.status == "expired":
        raise InvalidState("the standing order has expired", details={"status": order.status})
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if name == "expires_at" and value is not None:
            value = value.astimezone(UTC)
        setattr(order, name, value)
    _check_action(order)
    order.version += 1
    order.changed_by = editor.user_id
    _to_pending(order, f"version {order.version} waits for approval")
    await audit.session.flush()
    await audit.record(
        "order.changed",
        "standing_order",
        order.id,
        {
            "number": order.number,
            "changed": sorted(changes),
            "by": editor.username,
            **_definition(order),
        },
    )
    return order


def _to_pending(order: StandingOrder, reason: str) -> None:
    order.status = "pending_approval"
    order.status_reason = reason
    order.approved_by = order.approved_by_name = order.approved_at = None
    order.next_run_at = None


async def decide_order(
    audit: Recorder,
    order: StandingOrder,
    approver: Principal,
    approve: bool,
    comment: str = "",
    *,
    version: int | None = None,
    now: datetime | None = None,
) -> StandingOrder:
    """Approve (the ``version`` reviewed) or reject; never by its owner or last editor."""
    now = now or utcnow()
    await audit.session.refresh(order, with_for_update=True)
    if order.status != "pending_approval":
        raise InvalidState(
            f"the standing order is {order.status}, not pending approval",
            details={"status": order.status},
        )
    if approver.user_id in (order.owner_id, order.changed_by):
        raise FourEyes("the owner or the last editor of a standing order cannot approve it")
    if approve and version != order.version:
        raise InvalidState(
            f"version {version} was reviewed, but the order is at version {order.version}",
            details={"version": order.version},
        )
    if approve and order.expires_at <= now:
        raise InvalidState("the standing order has expired")
    if approve:
        order.status, order.status_reason = "active", None
        order.approved_by, order.approved_by_name = approver.user_id, approver.username
        order.approved_at = now
        order.consecutive_failures = 0
        if order.trigger is not None and order.trigger.get("type") == "cron":
            order.next_run_at = next_cron(order.trigger, now)
    else:
        order.status, order.status_reason = "rejected", f"rejected by {approver.username}"
    await audit.session.flush()
    await audit.record(
        "order.approved" if approve else "order.rejected",
        "standing_order",
        order.id,
        {
            "number": order.number,
            "version": order.version,
            "by": approver.username,
            "comment": comment[:500],
        },
    )
    return order


async def pause_order(audit: Recorder, order: StandingOrder, reason: str) -> StandingOrder:
    """Pausing only takes authority away: it needs no second person."""
    if order.status not in ("active", "pending_approval"):
        raise InvalidState(
            f"the standing order is {order.status}", details={"status": order.status}
        )
    order.status, order.status_reason, order.next_run_at = "paused", reason or "paused", None
    await audit.session.flush()
    await audit.record("order.paused", "standing_order", order.id, {"reason": reason})
    return order


async def resume_order(audit: Recorder, order: StandingOrder, by: Principal) -> StandingOrder:
    """Re-enabling gives authority back: it waits for another person's approval."""
    if order.status not in ("paused", "rejected"):
        raise InvalidState(
            f"the standing order is {order.status}", details={"status": order.status}
        )
    _to_pending(order, "re-enabled; waits for approval")
    order.changed_by = by.user_id
    order.consecutive_failures = 0
    await audit.session.flush()
    await audit.record("order.resume_requested", "standing_order", order.id, {"by": by.username})
    return order


# --- coverage: is a request inside an active order's scope? ---------------------------------


@dataclass
class Coverage:
    order: StandingOrder | None = None
    authorization: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def describe(self) -> str:
        a = self.authorization
        return (
            f"standing order #{a['number']} ({a['name']} v{a['version']}), "
            f"approved by {a['approved_by']} at {a['approved_at']}"
        )


def _risk_allowed(risk: Risk, max_risk: str) -> bool:
    return risk in _RANK and _RANK[risk] <= _RANK[Risk(max_risk)]


def _commands_in_scope(order: StandingOrder, steps: Sequence[dict[str, Any]]) -> bool:
    templates = [CommandTemplate.model_validate(t) for t in order.scope["commands"]]
    return all(
        any(match_template(t, step["command"]) is not None for t in templates) for step in steps
    )


async def _runs_in_window(session: AsyncSession, order: StandingOrder, now: datetime) -> int:
    since = now - timedelta(seconds=order.rate_limit["window_seconds"])
    count = await session.scalar(
        select(func.count())
        .select_from(Task)
        .where(
            Task.standing_order_id == order.id,
            Task.authorized_by == "standing_order",
            Task.created_at >= since,
        )
    )
    return int(count or 0)


async def authorize_by_order(
    session: AsyncSession,
    steps: Sequence[dict[str, Any]],
    servers: Sequence[Server],
    risk: Risk,
    now: datetime,
    *,
    sudo: bool = False,
    only: uuid.UUID | None = None,
) -> Coverage:
    """The first active order whose scope covers the request, or why none does."""
    query = select(StandingOrder).where(
        StandingOrder.status == "active", StandingOrder.expires_at > now
    )
    if only is not None:
        query = query.where(StandingOrder.id == only)
    notes: list[str] = []
    wanted = {s.id for s in servers}
    for order in (await session.scalars(query.order_by(StandingOrder.number))).all():
        if not _commands_in_scope(order, steps):
            continue
        scope = await resolve(session, parse_selector(order.scope["targets"]), facts=False)
        in_scope = {s.id for s in scope}
        if not wanted <= in_scope:
            notes.append(f"order #{order.number}: hosts outside its targets")
            continue
        if not _risk_allowed(risk, order.scope["max_risk"]):
            notes.append(
                f"order #{order.number}: {risk.value} is above its {order.scope['max_risk']}"
            )
            continue
        if sudo and not order.scope.get("sudo", False):
            notes.append(f"order #{order.number}: does not allow sudo")
            continue
        # requests counting against the same order queue here, so the limit holds
        await session.refresh(order, with_for_update=True)
        runs = await _runs_in_window(session, order, now)
        limit = order.rate_limit
        if runs >= limit["max_runs"]:
            notes.append(
                f"order #{order.number}: rate limit reached "
                f"({runs} runs in {limit['window_seconds']} s, at most {limit['max_runs']})"
            )
            continue
        return Coverage(
            order,
            {
                "by": "standing_order",
                "order_id": str(order.id),
                "number": order.number,
                "name": order.name,
                "version": order.version,
                "scope_sudo": bool(order.scope.get("sudo", False)),
                "approved_by": order.approved_by_name,
                "approved_at": order.approved_at.isoformat() if order.approved_at else None,
            },
        )
    if only is not None and not notes:
        notes.append("outside the standing order's scope")
    return Coverage(note="; ".join(notes) or None)


# --- running an order's action --------------------------------------------------------------


def order_requester(order: StandingOrder) -> Requester:
    """Runs of an order are requested by the order for its owner (who cannot approve them)."""
    actor = Actor(
        type="system",
        id=str(order.id),
        name=f"standing order #{order.number}",
        on_behalf_of=str(order.owner_id),
    )
    return Requester(order.owner_id, order.owner_name, actor, "standing_order")


async def fire(
    audit: Recorder,
    order: StandingOrder,
    *,
    why: str,
    settings_expiry: int,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Task:
    """Submit the order's action as a task (inside scope it runs unattended). While an
    earlier run of the order waits for a person, no further request piles up behind it."""
    assert order.action is not None
    waiting = await audit.session.scalar(
        select(Task.id).where(Task.standing_order_id == order.id, Task.status == "pending_approval")
    )
    if waiting is not None:
        raise RunWaiting(
            f"an earlier run of standing order #{order.number} still waits for approval",
            details={"task_id": str(waiting)},
        )
    template = CommandTemplate.model_validate(order.scope["commands"][order.action["command"]])
    params = {
        k: (labels or {}).get(v.removeprefix("$labels."), "") if v.startswith("$labels.") else v
        for k, v in order.action.get("params", {}).items()
    }
    command = render(template, params)
    reason = order.action.get("reason") or f"standing order #{order.number} ({order.name}): {why}"
    body = TaskCreate(targets=order.scope["targets"], command=command, reason=reason)
    task, _ = await submit(
        audit,
        order_requester(order),
        body,
        settings_expiry=settings_expiry,
        standing_order_id=order.id,
        now=now,
    )
    order.last_run_at = now or utcnow()
    return task


# --- views ----------------------------------------------------------------------------------


def order_public(order: StandingOrder) -> OrderPublic:
    return OrderPublic(
        id=order.id,
        number=order.number,
        name=order.name,
        description=order.description,
        owner=order.owner_name,
        owner_id=order.owner_id,
        status=order.status,
        status_reason=order.status_reason,
        trigger=order.trigger,
        scope=order.scope,
        action=order.action,
        rate_limit=order.rate_limit,
        expires_at=order.expires_at,
        missed_runs=order.missed_runs,
        pause_after_failures=order.pause_after_failures,
        consecutive_failures=order.consecutive_failures,
        version=order.version,
        next_run_at=order.next_run_at,
        last_run_at=order.last_run_at,
        approved_by=order.approved_by_name,
        approved_at=order.approved_at,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )
