"""The default spool: a folder on local disk.

Durability: the incoming file is renamed into place, fsynced, and its directory fsynced, so an
acknowledged instance survives a crash or power loss. Incoming files are staged inside the
spool (`.incoming/`) so placing one is a rename on the same filesystem, not a copy. With
`put_deferred` the fsyncs wait for `sync`, which does those of a whole group at once: every
file, and every folder once however many of the group's files it holds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from gateway.exceptions import PastEndError, SpoolError
from gateway.spool.base import SpoolEntry, StoredObject

_CHUNK = 1024 * 1024
_HASH_IN_PARALLEL = 256 * 1024  # below this a helper thread costs more than it saves
_KEY = re.compile(r"[A-Za-z0-9._/-]{1,512}")


class FilesystemSpool:
    """Spool objects as files under one root folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._staging = self.root / ".incoming"
        self._hasher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spool-hash")
        self._syncer = ThreadPoolExecutor(max_workers=16, thread_name_prefix="spool-sync")
        # put_deferred key -> folders whose entries changed for it, until `sync` flushes them
        self._unsynced: dict[str, set[Path]] = {}
        # put_deferred key -> the fsync of its file, started early for large objects
        self._flushing: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        try:
            self._staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool folder {self.root}: {exc.strerror}") from exc

    @property
    def staging_dir(self) -> Path:
        return self._staging

    def _path(self, key: str) -> Path:
        # A string check, not Path.resolve(): keys are built from grammar-checked UIDs, and
        # resolving (a syscall per path component) cost ~5 % of the C-STORE path.
        parts = key.split("/")
        if not _KEY.fullmatch(key) or any(part in ("", ".", "..") for part in parts):
            raise SpoolError(f"spool key {key!r} escapes the spool folder")
        return self.root.joinpath(*parts)

    def put(self, source: Path, key: str) -> StoredObject:
        stored, folders = self._place(source, key, flush=True)
        self._sync(sorted(folders), key)
        return stored

    def put_deferred(self, source: Path, key: str) -> StoredObject:
        stored, folders, flushing = self._place_deferred(source, key)
        with self._lock:
            self._unsynced[key] = folders
            if flushing is not None:
                self._flushing[key] = flushing
        return stored

    def sync(self, keys: Sequence[str]) -> None:
        # Every object and every folder it changed, each fsynced once and side by side: the
        # filesystem journals concurrent fsyncs together, so a group costs about one flush.
        paths: set[Path] = set()
        flushing: list[Future[None]] = []
        with self._lock:
            for key in keys:
                if key in self._unsynced:
                    early = self._flushing.pop(key, None)
                    if early is None:
                        paths.add(self._path(key))
                    else:
                        flushing.append(early)
                    paths.update(self._unsynced.pop(key))
        try:
            for early in flushing:
                early.result()
        except OSError as exc:
            raise SpoolError(
                f"cannot make {len(keys)} object(s) durable in the spool: {exc.strerror}"
            ) from exc
        self._sync(sorted(paths), f"{len(keys)} object(s)")

    def _place_deferred(
        self, source: Path, key: str
    ) -> tuple[StoredObject, set[Path], Future[None] | None]:
        """`_place` without the flush, but a large file's fsync starts now, beside the hash.

        Both release the GIL, so a 210 MB STOW-RS part is hashed while the disk flushes
        instead of before (`sync` then waits for that fsync and flushes the folders).
        """
        if source.stat().st_size < _HASH_IN_PARALLEL:
            stored, folders = self._place(source, key, flush=False)
            return stored, folders, None
        fd = os.open(source, os.O_RDONLY)
        flushing = self._syncer.submit(_fsync_and_close, fd)
        try:
            stored, folders = self._place(source, key, flush=False)
        except BaseException:
            with contextlib.suppress(OSError):
                flushing.result()
            raise
        return stored, folders, flushing

    def _place(self, source: Path, key: str, *, flush: bool) -> tuple[StoredObject, set[Path]]:
        """Hash and rename `source` to `key`, then (flush) fsync it; return it and the folders
        still to fsync.

        Renamed before the flush: a key is fresh (it ends in a random version token), so the
        rename replaces nothing, and the file's fsync then also writes its new folder entry
        (ext4 syncs a new file's parent; a journalling filesystem commits the rename with the
        file), leaving the folder fsync after it little to do. Nothing refers to the key
        before the database commit, so a crash in between leaves an orphan file, never a row
        without its bytes.
        """
        target = self._path(key)
        try:
            with source.open("rb") as reader:
                size = os.fstat(reader.fileno()).st_size
                hashing: Future[str] | None = None
                sha256 = ""
                if flush and size >= _HASH_IN_PARALLEL:
                    # hashlib and fsync both release the GIL: hash on another core while the
                    # disk flushes (the hash re-read was ~40 % of a 210 MB object's ingest).
                    hashing = self._hasher.submit(_sha256_of, reader)
                else:
                    sha256 = _sha256_of(reader)
                try:
                    folders = self._move_into(source, target)
                    if flush:
                        os.fsync(reader.fileno())
                finally:
                    if hashing is not None:
                        sha256 = hashing.result()
        except OSError as exc:
            with contextlib.suppress(OSError):
                source.unlink()
            raise SpoolError(f"cannot write {key} to the spool: {exc.strerror or exc}") from exc
        return StoredObject(key=key, size=size, sha256=sha256), folders

    def _move_into(self, source: Path, target: Path) -> set[Path]:
        """Rename `source` to `target`; return the folders whose entries changed."""
        folders = {target.parent}
        try:
            _move(source, target)
        except FileNotFoundError:
            # Try the rename first: the series folder usually exists, and creating it up
            # front cost a stat and a mkdir per instance.
            folders.update(_make_parents(target.parent, self.root))
            _move(source, target)
        return folders

    def _sync(self, paths: list[Path], what: str) -> None:
        try:
            if len(paths) > 1:
                for _ in self._syncer.map(_fsync_path, paths):
                    pass
            elif paths:
                _fsync_path(paths[0])
        except OSError as exc:
            raise SpoolError(f"cannot make {what} durable in the spool: {exc.strerror}") from exc

    def list_objects(self) -> Iterator[SpoolEntry]:
        for folder, dirs, files in os.walk(self.root):
            if folder == str(self.root):
                dirs[:] = [d for d in dirs if d != self._staging.name]
            dirs.sort()
            relative = os.path.relpath(folder, self.root)
            for name in sorted(files):
                with contextlib.suppress(FileNotFoundError):  # deleted while we walk
                    info = os.stat(os.path.join(folder, name))
                    key = name if relative == "." else f"{relative.replace(os.sep, '/')}/{name}"
                    yield SpoolEntry(key=key, size=info.st_size, modified=info.st_mtime)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except OSError as exc:
            raise SpoolError(f"cannot read {key} from the spool: {exc.strerror}") from exc

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        if start < 0 or end <= start:
            raise ValueError(f"invalid byte range {start}-{end}")
        handle = self.open(key)
        try:
            size = os.fstat(handle.fileno()).st_size
            if start >= size:
                raise PastEndError(f"byte {start} is past the end of {key} ({size} bytes)")
            handle.seek(start)
        except BaseException:
            handle.close()
            raise
        return io.BufferedReader(_Window(handle, min(end, size) - start), _CHUNK)

    def open_seekable(self, key: str, size: int) -> BinaryIO:
        return self.open(key)  # a local file seeks for free; the page cache reads ahead

    @contextlib.contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise SpoolError(f"spool object {key} is missing")
        yield path

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._lock:
            self._unsynced.pop(key, None)
            self._flushing.pop(key, None)  # runs to its end on its own; nobody waits
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for folder in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def check(self) -> None:
        probe = self._staging / ".ready-probe"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise SpoolError(f"spool folder {self.root} is not writable: {exc.strerror}") from exc

    def usage_bytes(self) -> int:
        """Bytes used by spooled objects (walks the tree; for metrics, not hot paths)."""
        total = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(folder, name)).st_size
        return total


class _Window(io.RawIOBase):
    """At most `length` bytes of an open file, from its current position."""

    def __init__(self, handle: BinaryIO, length: int) -> None:
        super().__init__()
        self._handle = handle
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        count = self._handle.readinto(view)  # type: ignore[attr-defined]
        self._left -= count
        return int(count)

    def close(self) -> None:
        self._handle.close()
        super().close()


def _sha256_of(reader: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := reader.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_durably(source, target)
        source.unlink()


def _make_parents(folder: Path, root: Path) -> list[Path]:
    """Create missing folders up to `root`; return the parents whose entries changed."""
    missing = []
    current = folder
    while not current.exists() and current != root:
        missing.append(current)
        current = current.parent
    folder.mkdir(parents=True, exist_ok=True)
    return [path.parent for path in missing]


def _copy_durably(source: Path, target: Path) -> None:
    partial = target.with_suffix(".partial")
    with source.open("rb") as reader, partial.open("wb") as writer:
        shutil.copyfileobj(reader, writer, _CHUNK)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(partial, target)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
