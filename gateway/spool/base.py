"""The spool protocol: put a finished local file durably, read it back as a stream.

`put` takes ownership of a complete file in `staging_dir` and returns only when the bytes are
durable (fsynced and renamed, or an S3 PUT completed). For a group of objects acknowledged
together, `put_deferred` for each and then one `sync` gives the same guarantee with the flushes
done together (every file, and each folder once, side by side). Keys are built from validated
UIDs plus a random version token, so a re-sent instance never overwrites bytes a sender may be
reading.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from gateway.dicom.uids import validate_uid


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One object found by listing the spool (for checks, never on the ingest path)."""

    key: str
    size: int
    modified: float  # epoch seconds


def spool_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """A fresh key for one version of an instance; raises InvalidInputError for bad UIDs."""
    study = validate_uid(study_uid, "StudyInstanceUID")
    series = validate_uid(series_uid, "SeriesInstanceUID")
    sop = validate_uid(sop_uid, "SOPInstanceUID")
    return f"{study}/{series}/{sop}.{secrets.token_hex(6)}.dcm"


class Spool(Protocol):
    """Where received bytes live until every delivery of the instance is settled."""

    @property
    def staging_dir(self) -> Path:
        """A local folder for incoming files (same filesystem as the spool when possible)."""
        ...

    def put(self, source: Path, key: str) -> StoredObject:
        """Move or upload `source` to `key` durably; `source` is consumed."""
        ...

    def put_deferred(self, source: Path, key: str) -> StoredObject:
        """Like `put`, but the object is durable only once `sync` has been called with its key.

        Until then it may be lost in a crash, so nobody may be told it is stored.
        """
        ...

    def sync(self, keys: Sequence[str]) -> None:
        """Make objects written by `put_deferred` durable; raise SpoolError if that fails."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the object for streaming reads."""
        ...

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        """Open bytes `start` to `end - 1` of the object for streaming (e.g. one frame).

        `end` past the object's end is clipped; `start` at or past it raises PastEndError.
        """
        ...

    def open_seekable(self, key: str, size: int) -> BinaryIO:
        """Open the `size`-byte object as a seekable file that fetches only the bytes read.

        For random access (one frame of a multi-frame object): a local file on disk, ranged
        reads (gateway/spool/ranged.py) where the bytes are remote.
        """
        ...

    def local_file(self, key: str) -> AbstractContextManager[Path]:
        """Yield a local path holding the object's bytes (for path-based senders)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def list_objects(self) -> Iterator[SpoolEntry]:
        """Every object in the spool (not the staging folder), listed as it is now."""
        ...

    def check(self) -> None:
        """Raise SpoolError if the spool cannot take writes now (readiness probe)."""
        ...
