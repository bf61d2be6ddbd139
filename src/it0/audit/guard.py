"""No change without its event: a session that changed rows must also have written audit.

Installed once on the session class; a commit that would change tenant or platform rows
without an audit event in the same transaction raises ``UnauditedChange`` and rolls back.
Statements that are bookkeeping, not changes (login throttle counters, a key's last-used
time), pass ``execution_options={"it0_audit_exempt": True}``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from it0.audit.chain import HEADS
from it0.core.errors import IT0Error

_AUDIT_TABLES = frozenset({"audit_events", "audit_checkpoints"})
# written on every login and refresh; the login itself is the audited event;
# live task output is progress; the task's start and end are the audited events
_EXEMPT_TABLES = frozenset({"login_throttle", "refresh_tokens", "task_output", "agent_events"})


class UnauditedChange(IT0Error):
    code = "internal_error"
    status = 500


def _note(session: Session, tables: set[str]) -> None:
    if tables & _AUDIT_TABLES:
        session.info["it0_audited"] = True
    changed = tables - _AUDIT_TABLES - _EXEMPT_TABLES
    if changed:
        session.info.setdefault("it0_changed", set()).update(changed)


def _note_pending(session: Session) -> None:
    objects = [*session.new, *session.deleted]
    objects += [obj for obj in session.dirty if session.is_modified(obj)]
    _note(session, {obj.__table__.name for obj in objects})


def _before_flush(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    _note_pending(session)


def _on_execute(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    if state.execution_options.get("it0_audit_exempt"):
        return
    table: Any = getattr(state.statement, "table", None)
    if table is not None:
        _note(state.session, {table.name})


def _before_commit(session: Session) -> None:
    # commit() runs this hook before it flushes what is still pending: count that too
    _note_pending(session)
    changed = session.info.get("it0_changed")
    if changed and not session.info.get("it0_audited"):
        raise UnauditedChange(
            "internal error: a change was not audited", details={"tables": sorted(changed)}
        )


def _reset(session: Session, *_args: Any) -> None:
    session.info.pop("it0_changed", None)
    session.info.pop("it0_audited", None)
    session.info.pop(HEADS, None)


def install_audit_guard() -> None:
    if event.contains(Session, "before_commit", _before_commit):
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "do_orm_execute", _on_execute)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _reset)
    event.listen(Session, "after_rollback", _reset)
