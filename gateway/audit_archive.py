"""The audit archive: JSON Lines files, one per month (or day), that events move to.

Exactly once, across crashes, with a write-ahead journal rather than by reading files back:

1. `append` first writes `.journal` (the batch's event ids and every target file's size
   before the batch), fsynced, then appends the lines and fsyncs each file (and the folder,
   for a new file). The caller deletes the rows only after `append` returned.
2. After the rows are deleted (committed), `settled` removes the journal.
3. A journal found later means a batch was cut off. If its events are all still in the
   database the delete never committed: `roll_back` cuts each file back to its size before the
   batch, so the next run writes those events once. If none is left the delete committed and
   the archive is already right. Either way no event is lost or written twice.

One process at a time per folder: `open()` takes an exclusive `flock` on `.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit_settings import ArchivePeriod
from gateway.db.engine import Row
from gateway.exceptions import ArchiveError

JOURNAL = ".journal"
LOCK = ".lock"


@dataclass(frozen=True, slots=True)
class Journal:
    """What an interrupted batch was about to write: its ids and each file's size before."""

    ids: tuple[int, ...]
    sizes: dict[str, int]


def file_name(at: float, period: ArchivePeriod) -> str:
    """The archive file of an event at epoch seconds `at` (UTC), e.g. `events-2026-03.jsonl`."""
    moment = datetime.fromtimestamp(at, tz=UTC)
    return f"events-{moment:%Y-%m-%d}.jsonl" if period == "day" else f"events-{moment:%Y-%m}.jsonl"


def event_line(row: Row) -> bytes:
    """One event as a JSON line; `detail` is kept exactly as stored."""
    at = float(row["at"])
    item: dict[str, Any] = {
        "id": int(row["id"]),
        "at": at,
        "time": datetime.fromtimestamp(at, tz=UTC).isoformat().replace("+00:00", "Z"),
        "kind": row["kind"],
        "actor": row["actor"],
        "study_instance_uid": row["study_instance_uid"],
        "sop_instance_uid": row["sop_instance_uid"],
        "outcome": row["outcome"],
        "detail": row["detail"],
    }
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


class EventArchive:
    """The archive folder, held exclusively between `open()` and `close()`."""

    def __init__(self, folder: Path, *, period: ArchivePeriod = "month") -> None:
        self.folder = folder
        self.period = period
        self._lock: int | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[EventArchive]:
        """Lock the folder (creating it) for one run; refuse if another process holds it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ArchiveError(
                f"cannot use the audit archive folder {self.folder}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ArchiveError(
                f"another process is archiving into {self.folder} (it holds {LOCK}); "
                "wait for it to finish"
            ) from exc
        self._lock = fd
        try:
            yield self
        finally:
            self._lock = None
            os.close(fd)  # releases the flock

    def pending(self) -> Journal | None:
        """The journal of a batch a crash cut off, or None."""
        path = self.folder / JOURNAL
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ArchiveError(
                f"cannot read {path}: {exc}; it records a batch a crash interrupted, "
                "do not delete it by hand"
            ) from exc
        return Journal(
            ids=tuple(int(i) for i in data["ids"]),
            sizes={str(k): int(v) for k, v in data["sizes"].items()},
        )

    def append(self, rows: Sequence[Row]) -> dict[str, int]:
        """Append `rows` durably (journal first); return the number of lines per file."""
        self._require_lock()
        groups: dict[str, list[bytes]] = {}
        for row in rows:
            groups.setdefault(file_name(float(row["at"]), self.period), []).append(event_line(row))
        sizes = {name: self._size(name) for name in groups}
        journal = {"ids": [int(row["id"]) for row in rows], "sizes": sizes}
        self._write_journal(json.dumps(journal).encode())
        created = False
        for name, lines in groups.items():
            created = created or sizes[name] == 0
            path = self.folder / name
            try:
                # Owner and group only: the trail names users, AE titles and studies.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                with os.fdopen(fd, "ab") as handle:
                    handle.write(b"".join(lines))
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise ArchiveError(f"cannot write the audit archive {path}: {exc}") from exc
        if created:
            self._sync_folder()
        return {name: len(lines) for name, lines in groups.items()}

    def settled(self) -> None:
        """The batch's rows are deleted (or were never deleted and are rolled back): forget it."""
        self._require_lock()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / JOURNAL).unlink()
        self._sync_folder()

    def roll_back(self, journal: Journal) -> None:
        """Cut every file of an interrupted batch back to its size before it, then forget it."""
        self._require_lock()
        for name, size in journal.sizes.items():
            path = self.folder / name
            try:
                with open(path, "r+b") as handle:
                    handle.truncate(size)
                    handle.flush()
                    os.fsync(handle.fileno())
                if size == 0:
                    path.unlink()
            except FileNotFoundError:
                continue  # the crash came before this file was created
            except OSError as exc:
                raise ArchiveError(f"cannot roll back {path}: {exc}") from exc
        self.settled()

    def files(self) -> list[Path]:
        """Every archive file in the folder, oldest period first."""
        return sorted(self.folder.glob("events-*.jsonl"))

    def _size(self, name: str) -> int:
        try:
            return (self.folder / name).stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise ArchiveError(f"cannot read {self.folder / name}: {exc.strerror}") from exc

    def _write_journal(self, data: bytes) -> None:
        temporary = self.folder / (JOURNAL + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.folder / JOURNAL)
        except OSError as exc:
            raise ArchiveError(f"cannot write {self.folder / JOURNAL}: {exc}") from exc
        self._sync_folder()

    def _sync_folder(self) -> None:
        try:
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ArchiveError(f"cannot sync the folder {self.folder}: {exc}") from exc

    def _require_lock(self) -> None:
        if self._lock is None:
            raise ArchiveError("the audit archive is written only inside EventArchive.open()")
