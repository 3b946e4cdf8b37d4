"""Transfer syntax conversion for WADO-RS: anything we can decode -> Explicit VR Little Endian.

Why only that direction: Explicit VR Little Endian is the one syntax every DICOMweb client
must understand (it is the default of `application/dicom` and `application/octet-stream` in
PS3.18), so it is what a viewer gets when it cannot take the stored encoding. Re-encoding
*into* a compressed syntax is lossy or slow and no client needs it from a gateway; a request
we cannot serve is answered 406 by the caller, which asks `can_transcode` before the first byte
of the response goes out.

The conversion reads the whole object (pydicom decodes pixel data in memory), so it is used
only when a client asks for it; `*` (as stored) streams the spool bytes untouched.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway.dicom import codecs
from gateway.exceptions import GatewayError

NATIVE = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
_WORD_VRS = {"OW": "u2", "OF": "f4", "OL": "u4", "OD": "f8", "OV": "u8"}


class TranscodeError(GatewayError):
    """The object cannot be converted to the requested transfer syntax."""


def is_encapsulated(transfer_syntax: str) -> bool:
    return UID(transfer_syntax).is_encapsulated


def can_decode(transfer_syntax: str) -> bool:
    """True if pixel data in `transfer_syntax` can be decoded here (a codec is installed)."""
    if transfer_syntax in NATIVE:
        return True
    codecs.require()
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except (NotImplementedError, ValueError):
        return False
    return bool(decoder.is_available)


def can_transcode(stored: str, target: str) -> bool:
    """True if an object stored as `stored` can be sent as `target`."""
    if stored == target:
        return True
    return target == ExplicitVRLittleEndian and can_decode(stored)


def to_explicit_little_endian(source: BinaryIO) -> bytes:
    """The Part 10 bytes of `source` re-encoded as Explicit VR Little Endian."""
    try:
        dataset = pydicom.dcmread(source)
        if str(dataset.file_meta.TransferSyntaxUID) == ExplicitVRLittleEndian:
            source.seek(0)
            return source.read()
    except Exception as exc:  # codecs and pydicom raise many types on odd data
        raise TranscodeError(f"cannot convert to Explicit VR Little Endian: {exc}") from exc
    buffer = io.BytesIO()
    write_explicit_little_endian(dataset, buffer)
    return buffer.getvalue()


def write_explicit_little_endian(dataset: Dataset, target: BinaryIO) -> None:
    """Write `dataset` (read whole, with its file meta) to `target` as Explicit VR Little Endian.

    Used by WADO-RS (above) and by per-destination transcoding (gateway/transform/), which
    edits the data set first. Changes `dataset` (pixel data decoded, transfer syntax).
    """
    try:
        stored = str(dataset.file_meta.TransferSyntaxUID)
        if is_encapsulated(stored):
            codecs.require()
            dataset.decompress(generate_instance_uid=False)
        elif stored == ExplicitVRBigEndian:
            _swap_words(dataset)
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dcmwrite(
            target,
            dataset,
            implicit_vr=False,
            little_endian=True,
            # force_encoding re-encodes the (converted) values of a big endian object; it
            # excludes enforce_file_format, but the object read from a Part 10 file already
            # has its preamble and file meta.
            enforce_file_format=stored != ExplicitVRBigEndian,
            force_encoding=stored == ExplicitVRBigEndian,
        )
    except TranscodeError:
        raise
    except Exception as exc:  # codecs and pydicom raise many types on odd data
        raise TranscodeError(f"cannot convert to Explicit VR Little Endian: {exc}") from exc


def _swap_words(dataset: Dataset) -> None:
    """Big endian OW/OF/... values as little endian bytes (pydicom writes bytes as they are)."""
    for element in dataset.iterall():
        kind = _WORD_VRS.get(str(element.VR))
        if kind is None or not isinstance(element.value, bytes | bytearray):
            continue
        width = int(kind[1])
        if len(element.value) % width:
            raise TranscodeError(f"{element.tag} has a length that is not a multiple of {width}")
        element.value = np.frombuffer(element.value, dtype=">" + kind).astype("<" + kind).tobytes()
