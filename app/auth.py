"""API keys and who owns what. No HTTP here: app/deps.py turns a missing key into a 401.

A key reads `key_<id>.<secret>`. The id finds the row; the secret is compared by its SHA-256
in constant time (hmac.compare_digest), so neither a timing nor a database dump gives a key
away. A plain hash rather than a slow KDF: the secret is 256 random bits, not a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from core.tables import ApiKey, new_id, utcnow

# Longest Authorization value looked at; a real key is ~70 characters.
MAX_KEY_CHARS = 200

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who is calling. tenant_id None with is_admin: the embedded single-user mode (auth off)."""

    tenant_id: str | None
    is_admin: bool
    name: str = "local"

    def can_see(self, row: Any) -> bool:
        """An admin sees every row; a key sees the rows it made."""
        return self.is_admin or (row is not None and getattr(row, "tenant_id", None) == self.tenant_id)

    def visible(self, row: T | None) -> T | None:
        """The row if this caller may see it, else None: a 404 must not confirm that it exists."""
        return row if row is not None and self.can_see(row) else None

    def scope(self, query: Select[Any], model: Any) -> Select[Any]:
        """Restrict a SELECT to this caller's rows (admins: unchanged)."""
        return query if self.is_admin else query.where(model.tenant_id == self.tenant_id)


LOCAL_ADMIN = Principal(tenant_id=None, is_admin=True)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(session: Session, *, name: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """A new key row and the key itself; the key is never stored, so show it now or lose it."""
    secret = secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), name=name, secret_sha256=_digest(secret), is_admin=is_admin)
    session.add(row)
    session.flush()
    return row, f"{row.id}.{secret}"


def verify_key(session: Session, *, presented: str) -> ApiKey | None:
    """The live key row that `presented` is, or None."""
    if len(presented) > MAX_KEY_CHARS or "." not in presented:
        return None
    key_id, _, secret = presented.partition(".")
    row = session.get(ApiKey, key_id) if key_id.isascii() and key_id.startswith("key_") else None
    # Compare even when no row matched, so an unknown id and a wrong secret take the same time.
    expected = row.secret_sha256 if row is not None else _digest("")
    matches = hmac.compare_digest(_digest(secret), expected)
    if row is None or not matches or row.revoked_at is not None:
        return None
    return row


def list_keys(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()


def revoke_key(session: Session, *, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True
