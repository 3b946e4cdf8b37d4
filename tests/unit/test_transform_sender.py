"""TransformingSender: one instance that cannot be transformed never holds back the others.

The inner sender is a stand-in that reads every instance the way the STOW-RS sender does
(`open()`, exactly `size` bytes) and records what it was given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
import pytest

from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.transform.sender import TransformingSender, transformer_for, with_transform
from tests.unit.test_transform_deidentify import CT, MR, MR_J2K, outgoing, transformer


@dataclass
class ReadingSender:
    name: str = "pacs"
    received: list[tuple[OutgoingInstance, pydicom.Dataset]] = field(default_factory=list)
    detail: str = ""

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        results = []
        for inst in batch:
            with inst.open() as fp:
                data = fp.read()
            assert len(data) == inst.size
            with inst.local_file() as path:
                assert path.read_bytes() == data
                self.received.append((inst, pydicom.dcmread(path)))
            results.append(SendResult(inst.delivery_id, Outcome.DELIVERED, "0x0000", self.detail))
        return results

    def close(self) -> None:
        pass


def burned_in(tmp_path: Path) -> Path:
    path = tmp_path / "burned.dcm"
    ds = pydicom.dcmread(MR)
    ds.BurnedInAnnotation = "YES"
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path)
    return path


def test_a_refused_instance_is_dead_and_the_rest_is_sent(tmp_path: Path) -> None:
    inner = ReadingSender()
    sender = TransformingSender(inner, transformer({"deidentify": "basic"}, tmp_path))
    batch = [outgoing(CT, 1), outgoing(burned_in(tmp_path), 2), outgoing(MR_J2K, 3)]
    results = {r.delivery_id: r for r in sender.send(batch)}
    assert set(results) == {1, 2, 3}
    refused = results[2]
    assert refused.outcome is Outcome.PERMANENT and refused.status == "transform failed"
    assert refused.detail.startswith("de-identification refused: BurnedInAnnotation is YES")
    assert "burned_in_annotation: allow" in refused.detail  # the fix is named
    assert [inst.delivery_id for inst, _ in inner.received] == [1, 3]
    for inst, dataset in inner.received:
        result = results[inst.delivery_id]
        assert result.outcome is Outcome.DELIVERED
        assert result.detail.startswith("de-identified (basic profile); sent as SOP instance ")
        assert inst.sop_instance_uid == dataset.SOPInstanceUID in result.detail
        assert inst.sop_instance_uid != batch[inst.delivery_id - 1].sop_instance_uid
    assert list((tmp_path / "work").iterdir()) == []  # every copy removed after the send


def test_the_destinations_detail_comes_first(tmp_path: Path) -> None:
    inner = ReadingSender(detail="coercion of data elements")
    sender = TransformingSender(inner, transformer({"deidentify": "basic"}, tmp_path))
    (result,) = sender.send([outgoing(CT)])
    assert result.detail.startswith("coercion of data elements; de-identified (basic profile);")


def test_a_spool_read_error_is_transient(tmp_path: Path) -> None:
    def unreadable() -> contextlib.AbstractContextManager[Path]:
        raise OSError("disk on fire")

    inner = ReadingSender()
    sender = TransformingSender(inner, transformer({"deidentify": "basic"}, tmp_path))
    broken = replace(outgoing(CT, 1), local_file=unreadable)
    results = sender.send([broken, outgoing(MR, 2)])
    assert [(r.delivery_id, r.outcome) for r in results] == [
        (1, Outcome.TRANSIENT),
        (2, Outcome.DELIVERED),
    ]
    assert "disk on fire" in results[0].detail


def test_an_unexpected_error_is_permanent_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.transform.pipeline as pipeline

    def broken(*_args: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(pipeline, "deidentify", broken)
    sender = TransformingSender(ReadingSender(), transformer({"deidentify": "basic"}, tmp_path))
    (result,) = sender.send([outgoing(CT)])
    assert result.outcome is Outcome.PERMANENT
    assert result.detail == "de-identification failed: KeyError: 'surprise'"


def test_without_a_transform_the_sender_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import parse_settings

    monkeypatch.setenv("DICOM_GATEWAY_DEID_SECRET", "s" * 32)
    raw = {
        "destinations": {
            "plain": {"type": "dimse", "ae_title": "P", "host": "127.0.0.1", "port": 104},
            "research": {
                "type": "dimse",
                "ae_title": "R",
                "host": "127.0.0.1",
                "port": 105,
                "transform": {"deidentify": "basic"},
            },
        }
    }
    destinations = parse_settings(raw, base_dir=tmp_path).destinations
    inner = ReadingSender()
    assert with_transform(inner, transformer_for(destinations["plain"])) is inner
    wrapped = with_transform(inner, transformer_for(destinations["research"]))
    assert isinstance(wrapped, TransformingSender) and wrapped.name == "pacs"


def test_a_missing_secret_stops_the_gateway_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import parse_settings
    from gateway.exceptions import ConfigError

    monkeypatch.delenv("DICOM_GATEWAY_DEID_SECRET", raising=False)
    raw = {
        "destinations": {
            "research": {
                "type": "dimse",
                "ae_title": "R",
                "host": "127.0.0.1",
                "port": 105,
                "transform": {"deidentify": "basic"},
            }
        }
    }
    research = parse_settings(raw, base_dir=tmp_path).destinations["research"]
    with pytest.raises(ConfigError, match=r"DICOM_GATEWAY_DEID_SECRET .* is not set"):
        transformer_for(research)
    monkeypatch.setenv("DICOM_GATEWAY_DEID_SECRET", "short")
    with pytest.raises(ConfigError, match=r"destinations\.research\.transform\.deidentify: .*16"):
        transformer_for(research)
