"""Bulk import: DICOM Part 10 files from folders, through the same ingest as every other door.

Why a door of its own: migrations and backfills start from files on a disk (a retired PACS's
export, a patient CD, a research archive). Pushing them through `storescu` costs an
association round trip and a re-encoding per file; importing calls ingest directly, commits
files in groups as STOW-RS does, and routes them like any arrival (rules can ask
`source: import`). The user's files are never moved or changed: each is copied into the spool's
staging folder first, and the copy is what ingest consumes.

What is not an instance (a DICOMDIR, a README on a CD, a file without the Part 10 header) is
skipped and listed, not refused: only DICOM files that ingest turns down count as refused.
Running out of storage stops the import at once (every further file would fail the same way);
everything committed before that is durable and queued.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.db.instances import IngestOutcome
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.ingest import Ingestor, IngestResult, Source

DICOMDIR_CLASS = b"1.2.840.10008.1.3.10"
_HEAD = 132 + 256  # preamble, prefix and the start of the file meta (for the DICOMDIR check)


@dataclass(slots=True)
class ImportReport:
    """What became of every file seen so far; updated as the import goes."""

    total_files: int = 0
    total_bytes: int = 0
    seen: int = 0
    seen_bytes: int = 0
    outcomes: dict[IngestOutcome, int] = field(default_factory=dict)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    stopped: str | None = None  # why the import stopped early (storage unavailable)

    @property
    def accepted(self) -> int:
        return sum(self.outcomes.values())


@dataclass(frozen=True, slots=True)
class Candidate:
    path: Path
    size: int


def find_files(paths: Sequence[Path], *, recursive: bool = True) -> list[Candidate]:
    """Every regular file named or below the folders named, in a stable order.

    Raises FileNotFoundError for a path that does not exist, so a typo is not an empty import.
    """
    found: list[Candidate] = []
    for path in paths:
        if path.is_file():
            found.append(Candidate(path, path.stat().st_size))
        elif path.is_dir():
            found.extend(_walk(path, recursive))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def _walk(folder: Path, recursive: bool) -> Iterator[Candidate]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if not recursive:
            dirs.clear()
        for name in sorted(files):
            path = Path(root) / name
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    yield Candidate(path, path.stat().st_size)


def import_files(
    ingestor: Ingestor,
    candidates: Iterable[Candidate],
    source: Source,
    *,
    batch_size: int = 50,
    report: ImportReport | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Ingest every candidate; `on_progress` is called after each committed group."""
    report = report if report is not None else ImportReport()
    pending: list[tuple[Candidate, Path]] = []
    for candidate in candidates:
        reason = _not_an_instance(candidate.path)
        if reason is not None:
            report.seen += 1
            report.seen_bytes += candidate.size
            report.skipped.append((candidate.path, reason))
            continue
        try:
            pending.append((candidate, _stage(ingestor, candidate.path)))
        except OSError as exc:
            report.seen += 1
            report.seen_bytes += candidate.size
            if _is_storage_error(exc):
                report.stopped = f"cannot copy into the spool's staging folder: {exc}"
                break
            report.skipped.append((candidate.path, f"cannot be read: {exc.strerror or exc}"))
            continue
        if len(pending) >= batch_size:
            _commit(ingestor, source, pending, report)
            pending = []
            if on_progress is not None:
                on_progress(report)
            if report.stopped:
                break
    if pending and not report.stopped:
        _commit(ingestor, source, pending, report)
    else:
        _unstage(pending)
    if on_progress is not None:
        on_progress(report)
    return report


def _commit(
    ingestor: Ingestor,
    source: Source,
    pending: list[tuple[Candidate, Path]],
    report: ImportReport,
) -> None:
    outcomes = ingestor.accept_files([staged for _, staged in pending], source)
    for (candidate, staged), outcome in zip(pending, outcomes, strict=True):
        report.seen += 1
        report.seen_bytes += candidate.size
        if isinstance(outcome, IngestResult):
            report.outcomes[outcome.outcome] = report.outcomes.get(outcome.outcome, 0) + 1
        elif isinstance(outcome, InvalidInputError):
            report.refused.append((candidate.path, f"0x{outcome.dicom_status:04X} {outcome}"))
        elif isinstance(outcome, SpoolError | StoreError):
            report.stopped = f"gateway storage unavailable: {outcome}"
            report.refused.append((candidate.path, f"not stored: {outcome}"))
        else:
            report.refused.append((candidate.path, f"internal error: {outcome!r}"))
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()  # ingest consumed it on success; a refusal leaves it to us


def _stage(ingestor: Ingestor, path: Path) -> Path:
    staged = ingestor.staging_dir / f"import-{uuid.uuid4().hex}.dcm"
    try:
        shutil.copyfile(path, staged)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    return staged


def _unstage(pending: list[tuple[Candidate, Path]]) -> None:
    for _, staged in pending:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


def _not_an_instance(path: Path) -> str | None:
    try:
        with path.open("rb") as stream:
            head = stream.read(_HEAD)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if len(head) < 132 or head[128:132] != b"DICM":
        return "not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)"
    if DICOMDIR_CLASS in head:
        return "a DICOMDIR (media directory), not an instance"
    return None


def _is_storage_error(exc: OSError) -> bool:
    import errno

    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
