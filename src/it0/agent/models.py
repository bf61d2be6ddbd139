"""The tenant's own runbooks: a ``Runbook`` spec per row, keyed by the runbook's id."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from it0.core.clock import utcnow, uuid7
from it0.core.db import TenantBase, UTCDateTime


class TenantRunbook(TenantBase):
    """A runbook the tenant added; one with a built-in runbook's id replaces that one."""

    __tablename__ = "runbooks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    runbook_id: Mapped[str] = mapped_column(String(100), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
