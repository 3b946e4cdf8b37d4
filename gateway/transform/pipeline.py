"""The configured steps for one outgoing instance: a new Part 10 file, and what was done.

Steps run in a fixed order: de-identify, coerce, transcode. De-identification first so that a
coerced value (e.g. a research site's InstitutionName) is what the destination receives and
is not emptied again; transcoding last because it is the only step that decodes pixels.

Without transcoding, the header is edited and the pixels copied (gateway/transform/rewrite.py):
memory does not grow with object size. With it, the object is read whole and decoded
(gateway/dicom/transcode.py). When nothing is to be done (only `transfer_syntax`, and the
object is stored in it already), the stored instance goes out untouched.

The new file is a temporary file (in TMPDIR) deleted when the context of `prepare` ends,
that is, after the send; the spool object is only ever read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset

from gateway.dicom.transcode import TranscodeError, can_transcode, write_explicit_little_endian
from gateway.forward.base import OutgoingInstance
from gateway.transform.coerce import coerce
from gateway.transform.deidentify import deidentify
from gateway.transform.errors import TransformError
from gateway.transform.keys import Keys
from gateway.transform.rewrite import rewrite
from gateway.transform.settings import TransformSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the sender sends instead of the stored instance, and a note for the record."""

    instance: OutgoingInstance
    note: str  # e.g. "de-identified (basic profile); sent as SOP instance 2.25.1..." or ""


class Transformer:
    """Applies one destination's transform settings to outgoing instances."""

    def __init__(
        self, settings: TransformSettings, *, key: str, workdir: Path | None = None
    ) -> None:
        """`key` names the settings in errors (`destinations.NAME.transform`)."""
        self.settings = settings
        self._workdir = workdir
        deid = settings.deidentify
        self._keys = (
            None
            if deid is None
            else Keys.load(
                secret_env=deid.secret_env,
                secret_file=deid.secret_file,
                key=f"{key}.deidentify",
            )
        )

    @contextlib.contextmanager
    def prepare(self, inst: OutgoingInstance) -> Iterator[Prepared]:
        """The transformed instance while the context lasts; raises TransformError.

        OSError and SpoolError (reading the spool, writing the temporary file) pass through:
        they may not happen again.
        """
        settings = self.settings
        target_syntax = settings.transfer_syntax
        transcode = target_syntax is not None and target_syntax != inst.transfer_syntax_uid
        if not transcode and settings.deidentify is None and settings.coerce is None:
            yield Prepared(inst, "")
            return
        if transcode and target_syntax is not None:
            _check_transcodable(inst.transfer_syntax_uid, target_syntax)
        handle, name = tempfile.mkstemp(
            prefix="dicom-gateway-transform-", suffix=".dcm", dir=self._workdir
        )
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as target, inst.local_file() as source:
                written = self._write(source, target, transcode)
            yield Prepared(self._outgoing(inst, path, written), self._note(inst, written))
        finally:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # never fail a delivery that was sent for a cleanup
                log.warning("cannot remove the transformed copy %s: %s", path, exc)

    def _write(self, source: Path, target: BinaryIO, transcode: bool) -> _Written:
        steps: list[str] = []
        identity: dict[str, str] = {}

        def edit(dataset: Dataset) -> None:
            steps.extend(self._edit(dataset))
            identity.update(_identity(dataset))

        if transcode:
            with source.open("rb") as fp:
                try:
                    dataset = pydicom.dcmread(fp)
                except Exception as exc:  # untrusted bytes: pydicom raises many kinds
                    raise TransformError(
                        f"the stored instance is not readable DICOM: {exc}"
                    ) from exc
            edit(dataset)
            stored = str(dataset.file_meta.TransferSyntaxUID)
            try:
                write_explicit_little_endian(dataset, target)
            except TranscodeError as exc:
                raise TransformError(f"transcoding failed: {exc}") from exc
            steps.append(f"transcoded {stored} -> {dataset.file_meta.TransferSyntaxUID}")
            identity["transfer_syntax"] = str(dataset.file_meta.TransferSyntaxUID)
        else:
            rewrite(source, target, edit)
        return _Written(steps=tuple(steps), **identity)

    def _edit(self, dataset: Dataset) -> list[str]:
        steps = []
        deid = self.settings.deidentify
        if deid is not None and self._keys is not None:
            with _step("de-identification"):
                steps.append(deidentify(dataset, deid, self._keys).describe())
        if self.settings.coerce is not None:
            with _step("coercion"):
                steps.append(coerce(dataset, self.settings.coerce).describe())
        # Group lengths (retired, PS3.5 7.2) would be wrong after any change.
        tags = list(dataset.keys())  # a Dataset iterates over elements, not tags
        for tag in [tag for tag in tags if tag.element == 0 and tag.group != 2]:
            del dataset[tag]
        return steps

    @staticmethod
    def _outgoing(inst: OutgoingInstance, path: Path, written: _Written) -> OutgoingInstance:
        return replace(
            inst,
            study_instance_uid=written.study_instance_uid,
            series_instance_uid=written.series_instance_uid,
            sop_instance_uid=written.sop_instance_uid,
            sop_class_uid=written.sop_class_uid,
            transfer_syntax_uid=written.transfer_syntax,
            size=path.stat().st_size,
            sha256=None,  # other bytes than those recorded at ingest: the sender hashes anew
            open=_opener(path),
            local_file=lambda: contextlib.nullcontext(path),
        )

    @staticmethod
    def _note(inst: OutgoingInstance, written: _Written) -> str:
        note = ", ".join(written.steps)
        if written.sop_instance_uid != inst.sop_instance_uid:
            note += (
                f"; sent as SOP instance {written.sop_instance_uid} "
                f"(study {written.study_instance_uid}, series {written.series_instance_uid})"
            )
        return note


@dataclass(frozen=True, slots=True, kw_only=True)
class _Written:
    steps: tuple[str, ...]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str


def _identity(dataset: Dataset) -> dict[str, str]:
    """The names the edited object goes out under (read before the pixel step changes it)."""
    try:
        return {
            "study_instance_uid": str(dataset.StudyInstanceUID),
            "series_instance_uid": str(dataset.SeriesInstanceUID),
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "sop_class_uid": str(dataset.SOPClassUID),
            "transfer_syntax": str(dataset.file_meta.TransferSyntaxUID),
        }
    except AttributeError as exc:
        raise TransformError(f"the transformed object lacks an identifying UID: {exc}") from exc


def _check_transcodable(stored: str, target: str) -> None:
    if not can_transcode(stored, target):
        raise TransformError(
            f"transcoding failed: no decoder for {_named(stored)} is installed, so it cannot "
            f"become {_named(target)}; install the codecs extra "
            "(pip install 'dicom-gateway[codecs]') or remove transfer_syntax"
        )


def _named(uid: str) -> str:
    name = pydicom.uid.UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_copy() -> BinaryIO:
        return path.open("rb")

    return open_copy


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    """Turn an unexpected error inside a step into a TransformError naming the step."""
    try:
        yield
    except TransformError:
        raise
    except Exception as exc:
        raise TransformError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
