"""CStoreSender against DCMTK's storescp on 127.0.0.1, plus its pure planning and status rules."""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom._config
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.exceptions import ConfigError
from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.forward.cstore import (
    MAX_PRESENTATION_CONTEXTS,
    CStoreSender,
    _association_groups,
    _AssociationLost,
    status_outcome,
)
from gateway.forward.dimse_link import Response
from tests.harness.data import (
    dataset_bytes,
    make_ct_series,
    make_multiframe,
    make_tiny_instances,
)
from tests.harness.env import require_binary
from tests.harness.process import LOOPBACK, free_port
from tests.harness.storescp import StoreSCP

PYDICOM_FILES = Path(DATA_ROOT) / "test_files"


@pytest.fixture(autouse=True)
def chunked_store_send() -> Iterator[None]:
    """The gateway sets this process-wide at startup; tests must not leak it."""
    before = pynetdicom._config.STORE_SEND_CHUNKED_DATASET
    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        pynetdicom._config.STORE_SEND_CHUNKED_DATASET = before


@contextlib.contextmanager
def storescp_with(tmp_path: Path, *extra_args: str) -> Iterator[StoreSCP]:
    """storescp with extra options (the shared ``storescp`` fixture has none)."""
    require_binary("storescp")
    scp = StoreSCP(tmp_path / "received", extra_args=extra_args)
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def sender_for(scp: StoreSCP, **kwargs: Any) -> CStoreSender:
    return CStoreSender(name="pacs", ae_title=scp.aet, host=LOOPBACK, port=scp.port, **kwargs)


def outgoing(path: Path, delivery_id: int, **changes: Any) -> OutgoingInstance:
    """An OutgoingInstance for a Part 10 file, as the worker would build it from the spool."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    fields: dict[str, Any] = {
        "delivery_id": delivery_id,
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": str(ds.SOPClassUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "size": path.stat().st_size,
        "open": lambda: path.open("rb"),
        "local_file": lambda: contextlib.nullcontext(path),
    }
    fields.update(changes)
    return OutgoingInstance(**fields)


def ct_batch(tmp_path: Path, count: int, *, seed: int, first_id: int = 1) -> list[OutgoingInstance]:
    paths = make_ct_series(tmp_path / f"ct{seed}", count, rows=64, cols=64, seed=seed)
    return [outgoing(p, first_id + n) for n, p in enumerate(paths)]


def unknown_sop_class_instance(tmp_path: Path, delivery_id: int) -> OutgoingInstance:
    """A valid file whose SOP class no SCP knows (a fresh private UID)."""
    (path,) = make_ct_series(
        tmp_path / "unknown", 1, rows=8, cols=8, seed=99, overrides={"SOPClassUID": generate_uid()}
    )
    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(path, enforce_file_format=True)
    return outgoing(path, delivery_id)


def assert_arrived_unchanged(scp: StoreSCP, batch: list[OutgoingInstance]) -> None:
    for inst in batch:
        received = scp.file_for(inst.sop_instance_uid)
        assert received is not None, f"{inst.sop_instance_uid} did not arrive"
        with inst.local_file() as sent:
            assert dataset_bytes(received) == dataset_bytes(sent)


# -- against storescp ------------------------------------------------------------------------


@pytest.mark.dcmtk
def test_instances_arrive_byte_identical(tmp_path: Path, storescp: StoreSCP) -> None:
    batch = ct_batch(tmp_path, 4, seed=1)
    results = sender_for(storescp).send(batch)
    assert [r.delivery_id for r in results] == [i.delivery_id for i in batch]
    assert {(r.outcome, r.status, r.warning) for r in results} == {
        (Outcome.DELIVERED, "0x0000", False)
    }
    assert_arrived_unchanged(storescp, batch)


@pytest.mark.dcmtk
def test_mixed_transfer_syntaxes_in_one_batch(tmp_path: Path, storescp: StoreSCP) -> None:
    names = ["JPEG-lossy.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_implicit.dcm"]
    batch = [outgoing(PYDICOM_FILES / name, n) for n, name in enumerate(names, start=10)]
    batch += ct_batch(tmp_path, 2, seed=2)
    assert len({i.transfer_syntax_uid for i in batch}) == 5
    results = sender_for(storescp).send(batch)
    assert all(r.outcome is Outcome.DELIVERED for r in results), results
    assert_arrived_unchanged(storescp, batch)
    assert (
        storescp.log_text().count("Association Acknowledged") == 1
    )  # one association for the whole batch


@pytest.mark.dcmtk
def test_stopped_storescp_is_transient_for_all(tmp_path: Path, storescp: StoreSCP) -> None:
    batch = ct_batch(tmp_path, 3, seed=3)
    sender = sender_for(storescp)
    storescp.stop()
    results = sender.send(batch)
    assert {(r.outcome, r.status) for r in results} == {(Outcome.TRANSIENT, "connect failed")}
    assert str(storescp.port) in results[0].detail


@pytest.mark.dcmtk
def test_refused_sop_class_is_permanent_and_others_are_delivered(
    tmp_path: Path, storescp: StoreSCP
) -> None:
    good = ct_batch(tmp_path, 2, seed=4)
    odd = unknown_sop_class_instance(tmp_path, 50)
    sender = sender_for(storescp)
    mixed = {r.delivery_id: r for r in sender.send([good[0], odd, good[1]])}
    alone = sender.send([odd])

    assert mixed[odd.delivery_id].outcome is Outcome.PERMANENT
    assert mixed[odd.delivery_id].status == "context rejected"
    assert "Abstract Syntax Not Supported" in mixed[odd.delivery_id].detail
    assert all(mixed[g.delivery_id].outcome is Outcome.DELIVERED for g in good)
    # Every context refused: pynetdicom ends the association, the verdict is the same.
    assert [(r.outcome, r.status) for r in alone] == [(Outcome.PERMANENT, "context rejected")]


@pytest.mark.dcmtk
@pytest.mark.timeout(120)
def test_burst_of_tiny_instances_is_attributed_correctly(tmp_path: Path) -> None:
    paths = make_tiny_instances(tmp_path / "tiny", 400, seed=5)
    batch = [outgoing(p, 1000 + 3 * n) for n, p in enumerate(paths)]
    with storescp_with(tmp_path, "--ignore") as scp:
        sender = sender_for(scp, dimse_timeout=10)
        for _ in range(2):
            started = time.monotonic()
            results = sender.send(batch)
            assert time.monotonic() - started < 30
            assert [r.delivery_id for r in results] == [i.delivery_id for i in batch]
            assert all(r == SendResult(r.delivery_id, Outcome.DELIVERED, "0x0000") for r in results)
        log = scp.log_text()
    assert log.count("Received Store Request") == 2 * len(batch)


@pytest.mark.dcmtk
@pytest.mark.timeout(60)
def test_no_response_aborts_and_settles_the_rest_as_transient(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 3, seed=6)
    with storescp_with(tmp_path, "--sleep-during", "5") as scp:
        started = time.monotonic()
        results = sender_for(scp, dimse_timeout=1).send(batch)
        elapsed = time.monotonic() - started
    assert elapsed < 4
    assert (results[0].outcome, results[0].status) == (Outcome.TRANSIENT, "no response")
    assert {(r.outcome, r.status) for r in results[1:]} == {(Outcome.TRANSIENT, "not sent")}


@pytest.mark.dcmtk
@pytest.mark.timeout(60)
def test_peer_abort_mid_batch_is_transient(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 3, seed=7)
    with storescp_with(tmp_path, "--abort-after") as scp:
        results = sender_for(scp, dimse_timeout=10).send(batch)
    assert (results[0].outcome, results[0].status) == (Outcome.TRANSIENT, "association aborted")
    assert {(r.outcome, r.status) for r in results[1:]} == {(Outcome.TRANSIENT, "not sent")}


@pytest.mark.dcmtk
def test_file_that_is_not_dicom_is_permanent(tmp_path: Path, storescp: StoreSCP) -> None:
    good = ct_batch(tmp_path, 2, seed=8)
    junk_path = tmp_path / "junk.dcm"
    junk_path.write_bytes(b"garbage" * 40)
    junk = outgoing(
        tmp_path / "ct8" / "ct_0000.dcm", 77, local_file=lambda: contextlib.nullcontext(junk_path)
    )
    results = {r.delivery_id: r for r in sender_for(storescp).send([junk, *good])}
    assert results[77].outcome is Outcome.PERMANENT
    assert all(results[g.delivery_id].outcome is Outcome.DELIVERED for g in good)


@pytest.mark.dcmtk
def test_large_instance_is_streamed(tmp_path: Path) -> None:
    # pynetdicom's own send_msg queues every PDU of a message at once (~100 MiB here).
    inst = outgoing(make_multiframe(tmp_path / "big.dcm", 100 << 20), 1)
    with storescp_with(tmp_path, "--ignore") as scp:
        sender = sender_for(scp)
        tracemalloc.start()
        try:
            (result,) = sender.send([inst])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result == SendResult(1, Outcome.DELIVERED, "0x0000")
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while sending {inst.size >> 20} MiB"


# -- response verification (the defence against pynetdicom's response mix-up) ----------------


def _response(**changes: Any) -> Response:
    fields: dict[str, Any] = {
        "command_field": 0x8001,
        "message_id_responded_to": 7,
        "affected_sop_instance_uid": "1.2.3",
        "status": 0x0000,
        "error_comment": None,
    }
    fields.update(changes)
    return Response(**fields)


def _inst() -> OutgoingInstance:
    path = Path("/nonexistent")
    return OutgoingInstance(
        delivery_id=5,
        study_instance_uid="1.2",
        series_instance_uid="1.2.1",
        sop_instance_uid="1.2.3",
        sop_class_uid=CTImageStorage,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        size=0,
        open=lambda: path.open("rb"),
        local_file=lambda: contextlib.nullcontext(path),
    )


def test_matching_response_settles_the_instance() -> None:
    sender = CStoreSender(name="pacs", ae_title="PACS", host=LOOPBACK, port=104)
    result = sender._settle(_inst(), 7, _response(status=0xB000, error_comment="coerced"))
    assert result == SendResult(
        5, Outcome.DELIVERED, "0xB000", "coercion of data elements: coerced", True
    )


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"message_id_responded_to": 6}, "mismatched response"),
        ({"affected_sop_instance_uid": "1.2.4"}, "mismatched response"),
        ({"command_field": 0x8030}, "mismatched response"),
        ({"status": None}, "invalid response"),
    ],
)
def test_foreign_or_empty_response_ends_the_association(
    changes: dict[str, Any], status: str
) -> None:
    sender = CStoreSender(name="pacs", ae_title="PACS", host=LOOPBACK, port=104)
    with pytest.raises(_AssociationLost) as lost:
        sender._settle(_inst(), 7, _response(**changes))
    assert (lost.value.result.outcome, lost.value.result.status) == (Outcome.TRANSIENT, status)


# -- pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome", "warning"),
    [
        (0x0000, Outcome.DELIVERED, False),
        (0xB000, Outcome.DELIVERED, True),
        (0xB006, Outcome.DELIVERED, True),
        (0xB007, Outcome.DELIVERED, True),
        (0x0001, Outcome.DELIVERED, True),
        (0x0111, Outcome.DELIVERED, True),
        (0xA700, Outcome.TRANSIENT, False),
        (0xA7FF, Outcome.TRANSIENT, False),
        (0x0110, Outcome.TRANSIENT, False),
        (0xFE00, Outcome.TRANSIENT, False),
        (0xA900, Outcome.PERMANENT, False),
        (0xC000, Outcome.PERMANENT, False),
        (0xCFFF, Outcome.PERMANENT, False),
        (0x0122, Outcome.PERMANENT, False),
        (0x0124, Outcome.PERMANENT, False),
        (0xD000, Outcome.TRANSIENT, False),
    ],
)
def test_status_table(status: int, outcome: Outcome, warning: bool) -> None:
    assert status_outcome(status) == (outcome, warning)


def test_more_than_128_contexts_need_several_associations() -> None:
    path = Path("/nonexistent")
    batch = [
        OutgoingInstance(
            delivery_id=n,
            study_instance_uid="1.2",
            series_instance_uid="1.2.1",
            sop_instance_uid=f"1.2.3.{n}",
            sop_class_uid=f"1.2.840.10008.5.1.4.1.1.{n % 200}",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            size=0,
            open=lambda: path.open("rb"),
            local_file=lambda: contextlib.nullcontext(path),
        )
        for n in range(400)
    ]
    groups = _association_groups(batch)
    assert len(groups) == 2
    assert sorted(i.delivery_id for g in groups for i in g) == list(range(400))
    for group in groups:
        assert len({i.sop_class_uid for i in group}) <= MAX_PRESENTATION_CONTEXTS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ae_title": ""},
        {"ae_title": "A" * 17},
        {"calling_ae_title": "BAD\\AE"},
        {"port": 0},
        {"dimse_timeout": float("inf")},
        {"acse_timeout": 0},
        {"max_pdu": -1},
    ],
)
def test_bad_configuration_is_reported(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"name": "pacs", "ae_title": "PACS", "host": LOOPBACK, "port": 104}
    settings.update(kwargs)
    with pytest.raises(ConfigError, match="pacs"):
        CStoreSender(**settings)


def test_unreachable_peer_is_transient() -> None:
    sender = CStoreSender(name="pacs", ae_title="PACS", host=LOOPBACK, port=free_port())
    (result,) = sender.send([_inst()])
    assert (result.outcome, result.status) == (Outcome.TRANSIENT, "connect failed")
