"""Platform settings, read from the environment (prefix ``IT0_``) and built once per app."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["api", "worker", "scheduler", "voice"]
ALL_ROLES: tuple[Role, ...] = ("api", "worker", "scheduler", "voice")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IT0_", extra="ignore")

    data_dir: Path = Path(".it0")
    database_url: str | None = Field(
        default=None,
        description="postgresql+asyncpg://... to scale out; SQLite under data_dir if unset",
    )
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None

    admin_password: SecretStr | None = None
    signing_key_file: Path | None = None
    audit_key_file: Path | None = None
    # the vault's master key: base64 of 32 bytes, or else a key file (created on first start)
    master_key: SecretStr | None = None
    master_key_file: Path | None = None

    access_token_ttl: int = Field(default=900, ge=30, description="seconds")
    refresh_token_ttl: int = Field(default=30 * 86400, ge=60, description="seconds")

    login_max_failures: int = Field(default=5, ge=1)
    login_failure_window: int = Field(default=300, ge=1, description="seconds")
    login_max_failures_per_ip: int = Field(default=50, ge=1)

    # argon2id cost; the defaults follow RFC 9106's second recommended option
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    audit_checkpoint_every: int = Field(default=1000, ge=1)

    # the executor: SSH connection pool and local commands
    exec_max_concurrency: int = Field(default=200, ge=1, description="commands at once")
    exec_per_host_concurrency: int = Field(
        default=8, ge=1, description="commands at once per host (below sshd's MaxSessions)"
    )
    exec_connect_timeout: float = Field(default=10.0, gt=0, description="seconds")
    exec_command_timeout: float = Field(default=60.0, gt=0, description="seconds")
    exec_output_cap: int = Field(default=1024 * 1024, ge=1024, description="bytes per stream")
    exec_pool_idle_timeout: float = Field(default=300.0, gt=0, description="seconds")

    # oversight: approvals, tasks, standing orders, the scheduler
    approval_expiry_minutes: int = Field(default=60, ge=1, description="pending approvals end")
    approval_link_ttl: int = Field(default=3600, ge=60, description="seconds a signed link lives")
    task_batch_concurrency: int = Field(default=50, ge=1, description="hosts at once per batch")
    task_lease_seconds: float = Field(
        default=30.0, gt=0, description="a running task whose worker stops renewing is interrupted"
    )
    task_flush_interval: float = Field(default=0.2, gt=0, description="live output batching")
    scheduler_interval: float = Field(default=1.0, gt=0, description="seconds between ticks")
    order_misfire_grace: float = Field(
        default=60.0, ge=0, description="a tick later than this counts as missed"
    )

    # the agent: which model (``offline`` is the runbook planner), its endpoint, its budgets
    agent_model: str = Field(
        default="offline",
        description="offline | anthropic:<model> | openai:<model> | claude-sdk:<model>",
    )
    agent_base_url: str | None = Field(
        default=None, description="the model API's base URL (else the provider's own variable)"
    )
    agent_api_key: SecretStr | None = None
    agent_max_tool_calls: int = Field(default=20, ge=1, description="per turn")
    agent_max_tokens: int = Field(default=200_000, ge=100, description="input+output per turn")
    agent_turn_timeout: float = Field(default=300.0, gt=0, description="seconds per turn")
    agent_response_tokens: int = Field(default=4096, ge=16, description="per model response")
    agent_command_wait: float = Field(
        default=60.0,
        gt=0,
        description="seconds a read-only command may run before the agent moves on",
    )
    agent_output_chars: int = Field(
        default=6000, ge=200, description="command output shown to the model, per host"
    )
    agent_resume_interval: float = Field(
        default=5.0, gt=0, description="seconds between checks for decided approvals"
    )

    # voice calls: the WebSocket protocol's timers, and the offline speech stack
    voice_session_ttl: float = Field(
        default=60.0, gt=0, description="seconds a dropped call can be resumed"
    )
    voice_heartbeat_interval: float = Field(default=15.0, gt=0, description="seconds between pings")
    voice_heartbeat_timeout: float = Field(
        default=45.0, gt=0, description="seconds without client traffic before the call is dead"
    )
    voice_cleanup_interval: float = Field(
        default=30.0, gt=0, description="seconds between sweeps of expired sessions"
    )
    voice_token_ttl: int = Field(
        default=120, ge=5, description="seconds a WebSocket URL can be used to connect"
    )
    voice_max_frame_bytes: int = Field(
        default=64_000, ge=640, description="largest audio or control frame a client may send"
    )
    voice_stt: str = Field(default="whisper", description="whisper | openai | deepgram")
    voice_tts: str = Field(
        default="espeak", description="espeak | openai | deepgram | cartesia | elevenlabs"
    )
    voice_whisper_model: Path | None = Field(
        default=None, description="a CTranslate2 Whisper model directory (else the packaged one)"
    )
    voice_vad_stop_secs: float = Field(
        default=0.3, gt=0, description="silence that ends an utterance"
    )
    voice_vad_pause_secs: float = Field(
        default=0.1,
        ge=0,
        description="silence on which offline speech-to-text starts early (0: wait for the stop)",
    )
    voice_echo: bool = Field(
        default=False, description="calls echo the caller's audio: a line test, no speech"
    )
    voice_spoken_chars: int = Field(
        default=400, ge=50, description="longest answer read out; the rest stays in the session"
    )

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("agent_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        provider, sep, name = value.strip().partition(":")
        if value.strip() in ("", "offline", "none"):
            return "offline"
        if not sep or not name or provider not in ("anthropic", "openai", "claude-sdk"):
            raise ValueError(
                "IT0_AGENT_MODEL must be offline, anthropic:<model>, openai:<model> "
                "or claude-sdk:<model>"
            )
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("IT0_DATABASE_URL must start with postgresql+asyncpg:// ")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url is None or self.database_url.startswith("sqlite")

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "keys" / "signing.key"

    @property
    def audit_key_path(self) -> Path:
        return self.audit_key_file or self.data_dir / "keys" / "audit-checkpoint.key"

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / "keys" / "master.key"
