"""Authentication: who is calling (bearer JWT) and what they may do (scopes)."""

from __future__ import annotations

from gateway.auth.principal import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    Principal,
    TokenVerifier,
)

__all__ = ["SCOPE_ADMIN", "SCOPE_READ", "SCOPE_WRITE", "Principal", "TokenVerifier"]
