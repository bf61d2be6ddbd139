"""The platform's shared services, built once from settings and handed to every part."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from it0.audit.chain import AuditTrail
from it0.audit.guard import install_audit_guard
from it0.core.bus import EventBus, create_bus
from it0.core.db import Database
from it0.core.security import Passwords, TokenSigner, load_or_create_ed25519
from it0.core.settings import Settings


@dataclass
class Platform:
    settings: Settings
    db: Database
    bus: EventBus
    passwords: Passwords
    signer: TokenSigner
    audit: AuditTrail

    @classmethod
    def create(cls, settings: Settings) -> Platform:
        install_audit_guard()
        signing_key, _ = load_or_create_ed25519(settings.signing_key_path)
        audit_key, _ = load_or_create_ed25519(settings.audit_key_path)
        return cls(
            settings=settings,
            db=Database(settings),
            bus=create_bus(settings.redis_url),
            passwords=Passwords(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            signer=TokenSigner(signing_key, timedelta(seconds=settings.access_token_ttl)),
            audit=AuditTrail(audit_key, checkpoint_every=settings.audit_checkpoint_every),
        )

    async def close(self) -> None:
        await self.bus.close()
        await self.db.dispose()
