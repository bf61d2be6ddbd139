"""Request and response bodies of tasks, approvals, standing orders and policy rules."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from it0.core.schemas import Body
from it0.ops.policy import check_regex

RiskName = Literal["read_only", "low", "high", "critical", "unknown"]
TaskStatus = Literal[
    "pending_approval",
    "approved",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "rejected",
    "expired",
    "interrupted",
]
FINAL_STATUSES = frozenset(
    {"succeeded", "failed", "cancelled", "rejected", "expired", "interrupted"}
)


class Step(Body):
    name: str | None = Field(default=None, max_length=200)
    command: str = Field(min_length=1, max_length=65536)


class Rollout(Body):
    """Hosts run in batches; the task stops once failures pass the threshold."""

    batch_size: int | None = Field(default=None, ge=1, le=100000)
    batch_percent: float | None = Field(default=None, gt=0, le=100)
    pause_seconds: float = Field(default=0, ge=0, le=86400)
    max_failures: int | None = Field(default=None, ge=0, description="failed hosts tolerated")
    max_failure_percent: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_batch_rule(self) -> Rollout:
        if self.batch_size is not None and self.batch_percent is not None:
            raise ValueError("give batch_size or batch_percent, not both")
        return self


class TaskCreate(Body):
    targets: str = Field(min_length=1, max_length=4000, description="a server selector")
    command: str | None = Field(default=None, min_length=1, max_length=65536)
    script: str | None = Field(default=None, min_length=1, max_length=262144)
    steps: list[Step] | None = Field(default=None, min_length=1, max_length=100)
    reason: str = Field(default="", max_length=2000)
    sudo: bool = False
    timeout: float | None = Field(default=None, gt=0, le=86400, description="seconds per host")
    rollout: Rollout | None = None

    @model_validator(mode="after")
    def _exactly_one_operation(self) -> TaskCreate:
        given = [n for n in ("command", "script", "steps") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of command, script or steps")
        return self


class TaskPublic(BaseModel):
    id: uuid.UUID
    kind: str
    status: TaskStatus
    risk: RiskName
    targets: str
    servers: list[str]
    steps: list[dict[str, Any]]
    reason: str
    source: str
    requested_by: dict[str, Any]
    standing_order_id: uuid.UUID | None
    approval_id: uuid.UUID | None
    authorization: dict[str, Any]
    payload_hash: str
    sudo: bool
    rollout: dict[str, Any] | None
    counts: dict[str, int]
    message: str | None
    retry_of: uuid.UUID | None
    created_at: datetime
    approved_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class TaskHostPublic(BaseModel):
    server_id: uuid.UUID
    name: str
    batch: int
    status: str
    exit_status: int | None
    error: str | None
    steps: list[dict[str, Any]]
    stdout: str
    stderr: str
    truncated: bool
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None


class TaskDetail(TaskPublic):
    verdicts: list[dict[str, Any]]
    hosts: list[TaskHostPublic]


class TaskPage(BaseModel):
    items: list[TaskPublic]
    next_cursor: str | None


class VoteCreate(Body):
    comment: str = Field(default="", max_length=2000)


class LinkVote(Body):
    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=2000)


class VotePublic(BaseModel):
    voter: str
    voter_id: uuid.UUID
    decision: str
    comment: str
    via: str
    created_at: datetime


class ApprovalPublic(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID
    status: str
    risk: RiskName
    required: int
    approvals: int
    payload_hash: str
    requested_by: dict[str, Any]
    reason: str
    expires_at: datetime
    created_at: datetime
    decided_at: datetime | None
    votes: list[VotePublic]
    # what is being approved, spelled out
    targets: str
    servers: list[str]
    steps: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    sudo: bool


class ApprovalLink(BaseModel):
    url: str
    token: str
    expires_at: datetime


class ApprovalSettings(Body):
    required: dict[Literal["low", "high", "critical", "unknown"], int] = Field(
        default_factory=dict, description="approvals needed by risk (1-10)"
    )
    expiry_minutes: int | None = Field(default=None, ge=1, le=43200)

    @model_validator(mode="after")
    def _sane_counts(self) -> ApprovalSettings:
        for risk, count in self.required.items():
            if not 1 <= count <= 10:
                raise ValueError(f"required[{risk}] must be between 1 and 10")
        return self


class ApprovalSettingsPublic(BaseModel):
    required: dict[str, int]
    expiry_minutes: int


class ExplainRequest(Body):
    command: str = Field(min_length=1, max_length=65536)
    env: str | None = Field(default=None, max_length=64)


class ParamSpec(Body):
    """A typed parameter of a command template; its values are plain words, never shell."""

    type: Literal["string", "int", "enum"] = "string"
    values: list[str] | None = Field(default=None, max_length=200)
    pattern: str | None = Field(default=None, max_length=500)
    min: int | None = None
    max: int | None = None

    @field_validator("pattern")
    @classmethod
    def _safe_pattern(cls, value: str | None) -> str | None:
        return None if value is None else check_regex(value)


class CommandTemplate(Body):
    template: str = Field(
        min_length=1, max_length=4000, description="e.g. systemctl restart {unit}"
    )
    params: dict[str, ParamSpec] = Field(default_factory=dict)


class OrderScope(Body):
    targets: str = Field(min_length=1, max_length=4000, description="a server selector")
    commands: list[CommandTemplate] = Field(min_length=1, max_length=50)
    max_risk: Literal["read_only", "low", "high", "critical"] = "low"
    sudo: bool = Field(default=False, description="whether runs may use sudo")


class CronTrigger(Body):
    type: Literal["cron"] = "cron"
    cron: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^\S+( \S+){4}$",
        description="five fields: minute hour day-of-month month day-of-week",
    )
    timezone: str = Field(default="UTC", max_length=64)


class EventTrigger(Body):
    type: Literal["event"] = "event"
    topic: str = Field(min_length=1, max_length=200, description="e.g. alert.fired")
    labels: dict[str, str] = Field(default_factory=dict, description="all must match")


class OrderAction(Body):
    """What a trigger runs: one of the scope's templates with its parameters."""

    command: int = Field(default=0, ge=0, description="index into scope.commands")
    params: dict[str, str] = Field(default_factory=dict)
    reason: str = Field(default="", max_length=2000)


class RateLimit(Body):
    max_runs: int = Field(default=10, ge=1, le=100000)
    window_seconds: int = Field(default=3600, ge=1, le=31 * 86400)


class OrderCreate(Body):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = Field(default="", max_length=4000)
    trigger: CronTrigger | EventTrigger | None = Field(default=None, discriminator="type")
    scope: OrderScope
    action: OrderAction | None = None
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    expires_at: datetime
    missed_runs: Literal["skip", "run_once"] = "skip"
    pause_after_failures: int = Field(default=3, ge=1, le=1000)


class OrderUpdate(Body):
    """Only the fields given change; ``trigger`` and ``action`` may be set to null."""

    description: str | None = Field(default=None, max_length=4000)
    trigger: CronTrigger | EventTrigger | None = Field(default=None, discriminator="type")
    scope: OrderScope | None = None
    action: OrderAction | None = None
    rate_limit: RateLimit | None = None
    expires_at: datetime | None = None
    missed_runs: Literal["skip", "run_once"] | None = None
    pause_after_failures: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _no_null_for_required(self) -> OrderUpdate:
        for name in self.model_fields_set - {"trigger", "action"}:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class OrderDecision(Body):
    comment: str = Field(default="", max_length=2000)


class OrderApproval(OrderDecision):
    """The version approved: what the approver reviewed, not what it may have become."""

    version: int = Field(ge=1)


class OrderPublic(BaseModel):
    id: uuid.UUID
    number: int
    name: str
    description: str
    owner: str
    owner_id: uuid.UUID
    status: str
    status_reason: str | None
    trigger: dict[str, Any] | None
    scope: dict[str, Any]
    action: dict[str, Any] | None
    rate_limit: dict[str, int]
    expires_at: datetime
    missed_runs: str
    pause_after_failures: int
    consecutive_failures: int
    version: int
    next_run_at: datetime | None
    last_run_at: datetime | None
    approved_by: str | None
    approved_at: datetime | None
    created_at: datetime
    updated_at: datetime
