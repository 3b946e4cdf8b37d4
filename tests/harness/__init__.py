"""Real-peer test harness: Orthanc, DCMTK and the gateway itself as processes on 127.0.0.1.

Tests import from here (``from tests.harness import OrthancServer, storescu``); the modules
behind it are one concept each:

* :mod:`.process`: free ports, readiness waits, :class:`ManagedProcess` (cleanup guaranteed).
* :mod:`.orthanc`: :class:`OrthancServer`, the DICOMweb/DIMSE archive stand-in.
* :mod:`.storescp`: :class:`StoreSCP`, DCMTK's byte-faithful DIMSE receiver.
* :mod:`.dcmtk`: :func:`storescu`, :func:`echoscu`, :func:`dcmdump` wrappers.
* :mod:`.dicomweb`: :func:`stow` with a streamed multipart/related body.
* :mod:`.data`: deterministic generated series, streamed multi-GB objects, pydicom's files,
  and the comparisons (:func:`dataset_bytes`, :func:`same_content`).
* :mod:`.gateway`: :class:`GatewayProcess` and :func:`write_config` for the system under test.
"""

from .data import (
    dataset_bytes,
    dataset_offset,
    deterministic_uid,
    make_ct_series,
    make_multiframe,
    make_tiny_instances,
    pydicom_storage_files,
    same_content,
)
from .dcmtk import dcmdump, echoscu, storescu
from .dicomweb import multipart_related, stow
from .env import require_binary, require_file
from .gateway import GatewayProcess, write_config
from .orthanc import OrthancServer
from .process import (
    LOOPBACK,
    ManagedProcess,
    ProcessDiedError,
    free_port,
    wait_for_port,
    wait_until,
)
from .storescp import StoreSCP

__all__ = [
    "LOOPBACK",
    "GatewayProcess",
    "ManagedProcess",
    "OrthancServer",
    "ProcessDiedError",
    "StoreSCP",
    "dataset_bytes",
    "dataset_offset",
    "dcmdump",
    "deterministic_uid",
    "echoscu",
    "free_port",
    "make_ct_series",
    "make_multiframe",
    "make_tiny_instances",
    "multipart_related",
    "pydicom_storage_files",
    "require_binary",
    "require_file",
    "same_content",
    "storescu",
    "stow",
    "wait_for_port",
    "wait_until",
    "write_config",
]
