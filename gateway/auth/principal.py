"""The authenticated caller and the seam every token verifier implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SCOPE_READ = "dicomweb.read"
SCOPE_WRITE = "dicomweb.write"
SCOPE_ADMIN = "gateway.admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's subject and the scopes it grants."""

    subject: str
    scopes: frozenset[str]
    client_id: str | None = None


class TokenVerifier(Protocol):
    """Turns a bearer token into a Principal, or raises AuthError saying why not."""

    def verify(self, token: str) -> Principal: ...
