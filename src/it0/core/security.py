"""Key files, password hashing, opaque secrets and signed access tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from it0.core.errors import AuthenticationError


def load_or_create_ed25519(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Load a PEM Ed25519 private key, creating it (mode 0600) on first use.

    Returns the key and whether it was created now.
    """
    if path.exists():
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path.name} is not an Ed25519 private key")
        return key, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Two processes starting at once must neither overwrite each other's key nor read a
    # half-written file: write a private temp file, then link it into place (fails if taken).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_ed25519(path)[0], False
    finally:
        tmp.unlink(missing_ok=True)
    return key, True


def public_key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


class Passwords:
    """argon2id hashing; verification of an unknown user costs the same as a wrong password."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._dummy = self._hasher.hash(random_token())

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    tenant_id: str
    tenant_slug: str
    family_id: str
    expires_at: datetime


class TokenSigner:
    """EdDSA-signed JWT access tokens; any API replica holding the key file can verify them."""

    issuer = "it0"

    def __init__(self, key: Ed25519PrivateKey, ttl: timedelta) -> None:
        self._key = key
        self._public = key.public_key()
        self.ttl = ttl

    def issue(
        self, *, user_id: str, tenant_id: str, slug: str, family_id: str, now: datetime
    ) -> str:
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user_id,
            "tid": tenant_id,
            "ten": slug,
            "fam": family_id,
            "iat": int(now.timestamp()),
            "exp": int((now + self.ttl).timestamp()),
            "typ": "access",
        }
        return jwt.encode(payload, self._key, algorithm="EdDSA")

    def issue_claims(self, claims: dict[str, Any], *, typ: str, expires_at: datetime) -> str:
        """A signed token of another kind (e.g. an approval link), never an access token."""
        payload = {**claims, "iss": self.issuer, "typ": typ, "exp": int(expires_at.timestamp())}
        return jwt.encode(payload, self._key, algorithm="EdDSA")

    def verify_claims(self, token: str, *, typ: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public,
                algorithms=["EdDSA"],
                issuer=self.issuer,
                options={"require": ["exp", "iss", "typ"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("link expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid link") from exc
        if claims.get("typ") != typ:
            raise AuthenticationError("invalid link")
        return claims

    def peek_tenant(self, token: str) -> str:
        """The tenant slug of a token before its signature is checked (to bind the session)."""
        try:
            return str(jwt.decode(token, options={"verify_signature": False})["ten"])
        except (jwt.InvalidTokenError, KeyError) as exc:
            raise AuthenticationError("invalid access token") from exc

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=["EdDSA"],
                issuer=self.issuer,
                options={"require": ["exp", "sub", "tid", "ten", "fam", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("access token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid access token") from exc
        if claims.get("typ") != "access":
            raise AuthenticationError("invalid access token")

        return AccessClaims(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tid"]),
            tenant_slug=str(claims["ten"]),
            family_id=str(claims["fam"]),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
