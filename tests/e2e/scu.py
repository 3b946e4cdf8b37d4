"""A byte-faithful C-STORE sender for tests: pynetdicom streaming each file's own bytes.

storescu re-encodes what it sends, so byte-fidelity checks use this sender instead; it also
reports the status of every instance, which the crash test needs to know what was acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config


def header_ids(path: Path) -> tuple[str, str, str]:
    """(SOP class, SOP instance, transfer syntax) of a Part 10 file, from its file meta.

    Read from the meta group only, so deliberately broken data sets can still be sent.
    """
    meta = read_file_meta_info(path)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def send_files(
    files: Sequence[Path],
    port: int,
    *,
    called_aet: str = "GATEWAY",
    calling_aet: str = "MODALITY",
    timeout: float = 60.0,
) -> dict[str, int | None]:
    """C-STORE each file (its own transfer syntax, its own bytes); SOP UID -> status or None.

    None means no status came back (association refused, aborted or broken).
    """
    _config.STORE_SEND_CHUNKED_DATASET = True
    ids = {path: header_ids(path) for path in files}
    results: dict[str, int | None] = {sop: None for _cls, sop, _ts in ids.values()}
    pairs = sorted({(cls, ts) for cls, _sop, ts in ids.values()})
    for start in range(0, len(pairs), 120):
        chunk = set(pairs[start : start + 120])
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        for cls, ts in chunk:
            ae.add_requested_context(cls, [ts])
        assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
        try:
            if not assoc.is_established:
                continue
            for path, (cls, sop, ts) in ids.items():
                if (cls, ts) not in chunk:
                    continue
                if not assoc.is_established:
                    break
                status = assoc.send_c_store(path)
                results[sop] = int(status.Status) if status and "Status" in status else None
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
    return results
