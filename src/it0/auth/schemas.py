"""Request and response bodies of the auth API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from it0.core.schemas import Body

SLUG = r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$"
USERNAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
ROLE = r"^[a-z][a-z0-9_-]{1,63}$"


class LoginRequest(Body):
    tenant: str = Field(min_length=1, max_length=40)
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(min_length=1, max_length=1024)


class RefreshRequest(Body):
    refresh_token: SecretStr = Field(min_length=1, max_length=512)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class TenantCreate(Body):
    slug: str = Field(pattern=SLUG, description="lowercase letters, digits and '-'")
    name: str = Field(default="", max_length=200)


class TenantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    slug: str
    name: str
    created_at: datetime


class MemberCreate(Body):
    username: str = Field(pattern=USERNAME)
    password: SecretStr | None = Field(default=None, min_length=10, max_length=1024)
    role: str = Field(default="viewer", pattern=ROLE)
    display_name: str = Field(default="", max_length=200)


class MemberUpdate(Body):
    role: str | None = Field(default=None, pattern=ROLE)
    display_name: str | None = Field(default=None, max_length=200)
    is_active: bool | None = None


class MemberPublic(BaseModel):
    id: uuid.UUID
    username: str
    display_name: str
    role: str
    is_active: bool
    created_at: datetime


class PasswordSet(Body):
    password: SecretStr = Field(min_length=10, max_length=1024)


class PasswordChange(Body):
    current_password: SecretStr = Field(min_length=1, max_length=1024)
    new_password: SecretStr = Field(min_length=10, max_length=1024)


class Me(BaseModel):
    user_id: uuid.UUID
    username: str
    tenant: str
    role: str
    permissions: list[str]
    via_api_key: uuid.UUID | None


class RoleCreate(Body):
    name: str = Field(pattern=ROLE)
    description: str = Field(default="", max_length=500)
    permissions: list[str] = Field(max_length=100)


class RolePublic(BaseModel):
    name: str
    description: str
    permissions: list[str]
    builtin: bool


class ApiKeyCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    role: str | None = Field(default=None, pattern=ROLE, description="defaults to your own role")
    expires_at: AwareDatetime | None = None  # a naive time cannot be compared to now


class ApiKeyPublic(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    role: str
    created_by: uuid.UUID
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="shown once; store it now")
