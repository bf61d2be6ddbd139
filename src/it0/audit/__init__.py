"""Hash-chained, append-only audit trail with signed checkpoints."""

from it0.audit.chain import Actor, AuditContext, AuditTrail, VerifyResult, canonical_json, redact
from it0.audit.guard import UnauditedChange, install_audit_guard

__all__ = [
    "Actor",
    "AuditContext",
    "AuditTrail",
    "UnauditedChange",
    "VerifyResult",
    "canonical_json",
    "install_audit_guard",
    "redact",
]
