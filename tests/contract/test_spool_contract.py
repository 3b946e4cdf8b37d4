"""The spool protocol, one behaviour per test, run against the folder and the S3 spool."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from gateway.exceptions import PastEndError, SpoolError
from gateway.spool import Spool, open_spool, spool_key
from tests.contract.conftest import Backends


def stage(spool: Spool, data: bytes, name: str = "incoming.dcm") -> Path:
    path = spool.staging_dir / name
    path.write_bytes(data)
    return path


def new_key(n: int = 1) -> str:
    return spool_key("1.2.3", "1.2.3.4", f"1.2.3.4.{n}")


def test_put_is_durable_and_consumes_the_staged_file(spool: Spool) -> None:
    data = os.urandom(100_000)
    source = stage(spool, data)
    key = new_key()
    stored = spool.put(source, key)
    assert stored.key == key
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert not source.exists()
    assert spool.exists(key)
    with spool.open(key) as stream:
        assert stream.read() == data


def test_open_streams_in_chunks(spool: Spool) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = new_key()
    spool.put(stage(spool, data), key)
    chunks = []
    with spool.open(key) as stream:
        while chunk := stream.read(65536):
            assert len(chunk) <= 65536
            chunks.append(chunk)
    assert b"".join(chunks) == data


def test_open_range_reads_one_window(spool: Spool) -> None:
    data = bytes(range(256)) * 40
    key = new_key()
    spool.put(stage(spool, data), key)
    with spool.open_range(key, 100, 1100) as stream:
        assert stream.read() == data[100:1100]
    with spool.open_range(key, len(data) - 10, len(data) + 500) as stream:
        assert stream.read() == data[-10:], "an end past the object is clipped"
    with pytest.raises(PastEndError):
        spool.open_range(key, len(data) + 1, len(data) + 10).read()
    with pytest.raises(ValueError, match="range"):
        spool.open_range(key, 10, 10)


def test_open_seekable_reads_anywhere(spool: Spool) -> None:
    data = os.urandom(300_000)
    key = new_key()
    spool.put(stage(spool, data), key)
    with spool.open_seekable(key, len(data)) as stream:
        assert stream.read(132) == data[:132]
        for start, size in ((250_000, 8), (10, 70_000), (299_990, 100), (150_000, 150_000)):
            assert stream.seek(start) == start
            assert stream.read(size) == data[start : start + size]
            assert stream.tell() == start + min(size, len(data) - start)
        assert stream.seek(-5, os.SEEK_END) == len(data) - 5
        assert stream.read() == data[-5:]
        assert stream.read(10) == b"", "past the end reads as EOF"


def test_open_seekable_on_a_short_object_reads_to_its_real_end(spool: Spool) -> None:
    data = os.urandom(1000)
    key = new_key()
    spool.put(stage(spool, data), key)
    with spool.open_seekable(key, 5000) as stream:  # a size larger than the object
        stream.seek(900)
        assert stream.read(500) == data[900:]
        stream.seek(2000)
        assert stream.read(10) == b""


def test_deferred_puts_are_durable_after_one_sync(spool: Spool) -> None:
    payloads = {
        spool_key("1.2.3", f"1.2.3.{n % 2}", f"1.2.3.9.{n}"): os.urandom(1000 + n) for n in range(5)
    }
    # and objects large enough to be flushed early, beside their hash
    payloads.update(
        {spool_key("1.2.3", "1.2.3.2", f"1.2.3.9.{n}"): os.urandom(300_000 + n) for n in (7, 8)}
    )
    stored = [
        spool.put_deferred(stage(spool, data, f"in-{n}.dcm"), key)
        for n, (key, data) in enumerate(payloads.items())
    ]
    assert [s.sha256 for s in stored] == [hashlib.sha256(d).hexdigest() for d in payloads.values()]
    assert not any(spool.staging_dir.iterdir()), "staged files are consumed"
    spool.sync(list(payloads))
    spool.sync([])  # nothing to do
    for key, data in payloads.items():
        with spool.open(key) as stream:
            assert stream.read() == data
    deleted = next(iter(payloads))
    spool.delete(deleted)  # deleting before or after the sync is fine
    assert not spool.exists(deleted)


def test_local_file_holds_the_bytes(spool: Spool) -> None:
    data = os.urandom(2 * 1024 * 1024)
    key = new_key()
    spool.put(stage(spool, data), key)
    with spool.local_file(key) as path:
        assert path.read_bytes() == data
    assert spool.exists(key), "the object stays after local_file"


def test_delete_is_idempotent(spool: Spool) -> None:
    key = new_key()
    spool.put(stage(spool, b"DICM"), key)
    spool.delete(key)
    assert not spool.exists(key)
    spool.delete(key)  # a missing object is not an error


def test_missing_object_raises_spool_error(spool: Spool) -> None:
    key = new_key(99)
    assert not spool.exists(key)
    with pytest.raises(SpoolError):
        spool.open(key).read()
    with pytest.raises(SpoolError), spool.local_file(key):
        pass


def test_check_passes_on_a_healthy_spool(spool: Spool) -> None:
    spool.check()


def test_a_new_version_never_overwrites_the_old(spool: Spool) -> None:
    first, second = new_key(), new_key()
    assert first != second
    spool.put(stage(spool, b"one"), first)
    spool.put(stage(spool, b"two"), second)
    with spool.open(first) as a, spool.open(second) as b:
        assert (a.read(), b.read()) == (b"one", b"two")


def test_concurrent_puts_all_land(spool: Spool) -> None:
    payloads = {new_key(n): os.urandom(50_000 + n) for n in range(12)}
    errors: list[BaseException] = []

    def put(key: str, data: bytes, n: int) -> None:
        try:
            spool.put(stage(spool, data, f"in-{n}.dcm"), key)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=put, args=(key, data, n))
        for n, (key, data) in enumerate(payloads.items())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for key, data in payloads.items():
        with spool.open(key) as stream:
            assert stream.read() == data


def test_big_object_goes_up_in_parts_and_streams_back(spool_backend: Backends) -> None:
    url = spool_backend.spool_url
    spool = open_spool(url + "?part_size_mb=5" if url.startswith("s3://") else url)
    size = 23 * 1024 * 1024 + 123
    source = spool.staging_dir / "big.dcm"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        block = os.urandom(1024 * 1024)
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    key = new_key()
    stored = spool.put(source, key)
    assert stored.size == size and stored.sha256 == digest.hexdigest()
    check = hashlib.sha256()
    with spool.open(key) as stream:
        while chunk := stream.read(1024 * 1024):
            check.update(chunk)
    assert check.hexdigest() == digest.hexdigest()
    if spool_backend.seaweedfs is not None:
        bucket, _, prefix = url[len("s3://") :].partition("/")
        head = spool_backend.seaweedfs.client().head_object(Bucket=bucket, Key=f"{prefix}/{key}")
        assert head["ETag"].strip('"').endswith("-5"), "uploaded as a 5-part multipart upload"
        assert head["ContentLength"] == size
        assert head["Metadata"]["sha256"] == digest.hexdigest()


def test_list_objects_names_every_object_but_not_staging(spool: Spool) -> None:
    keys = [new_key(n) for n in range(3)]
    for n, key in enumerate(keys):
        spool.put(stage(spool, bytes([n]) * (100 + n)), key)
    stage(spool, b"half received", "partial.dcm")
    listed = {entry.key: entry for entry in spool.list_objects()}
    assert set(listed) == set(keys)
    assert [listed[key].size for key in keys] == [100, 101, 102]
    assert all(entry.modified > 0 for entry in listed.values())
    spool.delete(keys[0])
    assert {entry.key for entry in spool.list_objects()} == set(keys[1:])
