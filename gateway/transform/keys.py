"""Keyed, deterministic replacements: UIDs and patient pseudonyms made with HMAC-SHA-256.

Why keyed and deterministic:
- Deterministic: every instance of a study is transformed on its own (different batches,
  workers, replicas, restarts), yet the destination must see one study with its series, and a
  re-send must land on the same instance (idempotent). The same input and key always give the
  same output; different inputs give different outputs (a 122-bit collision is not a concern).
- Keyed: a plain hash of a PatientID or UID can be reversed by hashing candidates (medical
  record numbers are few); without the key nobody can confirm a guess. Each destination may
  have its own key, so two recipients cannot link their copies.

A replacement UID is `2.25.` followed by the decimal value of a UUID (ISO/IEC 9834-8, the
form PS3.5 B.2 describes) whose 122 free bits come from the HMAC: version 8 ("custom", RFC
9562) marks it as derived, not random. pydicom's `generate_uid(entropy_srcs=...)` is
deterministic but unkeyed and, with a `2.25.` prefix, makes a number beyond 128 bits.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from pathlib import Path

from gateway.exceptions import ConfigError

MIN_SECRET_BYTES = 16

_UID_PURPOSE = b"uid\x00"
_PSEUDONYM_PURPOSE = b"patient\x00"


class Keys:
    """Makes replacement values from one destination's secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the de-identification secret has {len(secret)} bytes; use at least "
                f"{MIN_SECRET_BYTES} random characters (e.g. `openssl rand -hex 32`)"
            )
        self._secret = secret

    @classmethod
    def load(cls, *, secret_env: str | None, secret_file: Path | None, key: str) -> Keys:
        """The key from its environment variable or file; errors name `key` and the fix."""
        if secret_file is not None:
            try:
                secret = secret_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"{key}.secret_file {secret_file}: unreadable: {exc}") from exc
        elif secret_env is not None:
            value = os.environ.get(secret_env, "").strip()
            if not value:
                raise ConfigError(
                    f"{key}: the environment variable {secret_env} holding the "
                    "de-identification secret is not set; set it to at least "
                    f"{MIN_SECRET_BYTES} random characters, or name another with secret_env"
                )
            secret = value.encode("utf-8")
        else:
            raise ConfigError(f"{key}: give secret_env or secret_file")
        try:
            return cls(secret)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None

    def uid(self, original: str) -> str:
        """The replacement for UID `original`: `2.25.<uuid>`, at most 44 characters."""
        digest = self._digest(_UID_PURPOSE, original.strip("\x00 "))
        value = int.from_bytes(digest[:16], "big")
        value &= ~(0xF000 << 64)
        value |= 0x8000 << 64  # version 8
        value &= ~(0xC000 << 48)
        value |= 0x8000 << 48  # RFC 4122 variant
        return f"2.25.{uuid.UUID(int=value).int}"

    def pseudonym(self, patient: str, prefix: str) -> str:
        """A stable stand-in for one patient identity, e.g. `ANON-5F2C9A0B1D3E4F60`."""
        digest = self._digest(_PSEUDONYM_PURPOSE, patient)
        code = digest[:8].hex().upper()
        return f"{prefix}-{code}" if prefix else code

    def _digest(self, purpose: bytes, value: str) -> bytes:
        return hmac.new(self._secret, purpose + value.encode("utf-8"), hashlib.sha256).digest()
