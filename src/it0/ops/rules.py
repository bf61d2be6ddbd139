"""The tenant's additions to the built-in risk rules: stored, audited, applied per session."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from it0.core.clock import uuid7
from it0.inventory.service import Recorder
from it0.ops.errors import OpsNotFound
from it0.ops.models import PolicyRule
from it0.ops.policy import Policy, RuleSpec, relaxes

_RULES = select(PolicyRule).order_by(PolicyRule.id)  # read by every submission


async def tenant_rules(session: AsyncSession) -> list[PolicyRule]:
    return list((await session.scalars(_RULES)).all())


async def tenant_policy(session: AsyncSession) -> Policy:
    """The built-in rules extended by the tenant's own (which win where they match)."""
    rows = await tenant_rules(session)
    if not rows:
        return Policy.default()
    return Policy.default().extended([_spec(row) for row in rows])


def _spec(row: PolicyRule) -> RuleSpec:
    return RuleSpec.model_validate(row.spec)


def rule_public(row: PolicyRule) -> dict[str, Any]:
    """The rule with its row id; ``rule_id`` is what explanations name (``tenant:<rule_id>``)."""
    return {
        **row.spec,
        "rule_id": row.spec.get("id"),
        "id": str(row.id),
        "relaxes": row.relaxes,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }


async def add_rule(audit: Recorder, spec: RuleSpec, created_by: str) -> PolicyRule:
    """A rule that lowers a class (relaxes) is flagged as such on the row and the trail."""
    loosens = relaxes(Policy.default(), spec)
    row_id = uuid7()
    if spec.id is None:  # explanations then point at this row
        spec = spec.model_copy(update={"id": str(row_id)})
    row = PolicyRule(
        id=row_id, spec=spec.model_dump(mode="json"), relaxes=loosens, created_by=created_by
    )
    audit.session.add(row)
    await audit.session.flush()
    action = "policy.rule.relaxed" if loosens else "policy.rule.added"
    await audit.record(action, "policy_rule", row.id, {"rule": row.spec, "relaxes": loosens})
    return row


async def remove_rule(audit: Recorder, rule_id: uuid.UUID) -> None:
    row = await audit.session.get(PolicyRule, rule_id)
    if row is None:
        raise OpsNotFound(f"rule {rule_id} not found")
    await audit.session.delete(row)
    await audit.session.flush()
    await audit.record("policy.rule.removed", "policy_rule", rule_id, {"rule": row.spec})
