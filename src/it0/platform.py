"""The platform's shared services, built once from settings and handed to every part."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from it0.audit.chain import AuditTrail
from it0.audit.guard import install_audit_guard
from it0.core.bus import EventBus, create_bus
from it0.core.db import Database
from it0.core.security import Passwords, TokenSigner, load_or_create_ed25519
from it0.core.settings import Settings
from it0.execution import ConnectionPool, FleetExecutor, LocalExecutor
from it0.inventory.vault import Vault

if TYPE_CHECKING:
    from it0.inventory.models import Server
    from it0.inventory.service import Recorder
    from it0.ops.models import Task


class TaskStarter(Protocol):
    """This process's task worker, when it runs one."""

    async def start_now(self, audit: Recorder, task: Task, servers: list[Server]) -> bool:
        """Claim ``task``, authorized in ``audit``'s open transaction, in that transaction, to
        run here once it commits; False leaves it to the queue."""
        ...


@dataclass
class Platform:
    settings: Settings
    db: Database
    bus: EventBus
    passwords: Passwords
    signer: TokenSigner
    audit: AuditTrail
    vault: Vault
    executor: FleetExecutor
    # a task authorized where it is created starts in this process, without a trip through
    # the queue (set by the worker role's TaskRunner)
    task_starter: TaskStarter | None = None

    @classmethod
    def create(cls, settings: Settings) -> Platform:
        install_audit_guard()
        signing_key, _ = load_or_create_ed25519(settings.signing_key_path)
        audit_key, _ = load_or_create_ed25519(settings.audit_key_path)
        db, bus = Database(settings), create_bus(settings.redis_url)
        db.publisher = bus.publish
        return cls(
            settings=settings,
            db=db,
            bus=bus,
            passwords=Passwords(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            signer=TokenSigner(signing_key, timedelta(seconds=settings.access_token_ttl)),
            audit=AuditTrail(audit_key, checkpoint_every=settings.audit_checkpoint_every),
            vault=Vault.from_settings(settings),
            executor=_executor(settings),
        )

    async def close(self) -> None:
        await self.bus.close()  # first: a worker's handler may still use the executor
        await self.executor.close()
        await self.db.dispose()


def _executor(settings: Settings) -> FleetExecutor:
    pool = ConnectionPool(
        max_concurrency=settings.exec_max_concurrency,
        per_host_concurrency=settings.exec_per_host_concurrency,
        connect_timeout=settings.exec_connect_timeout,
        idle_timeout=settings.exec_pool_idle_timeout,
    )
    return FleetExecutor(
        pool=pool, local=LocalExecutor(max_concurrency=settings.exec_max_concurrency)
    )
