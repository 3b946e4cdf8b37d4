"""DCMTK's Query/Retrieve clients (findscu, movescu, getscu) as independent DIMSE peers.

Each wrapper runs the tool to completion with ``--debug`` (DCMTK dumps every DIMSE message
there, with its status as a number) and returns a :class:`QRResult`: the completed process,
the statuses of the responses it received, the Error Comments, and for findscu the response
identifiers (``--extract`` writes one file per pending response, read back with pydicom). Why
a parser of the log: the tools exit 0 whatever the peer's final status, so a test must read
what the peer said. Only INCOMING messages count (getscu also dumps its own C-STORE-RSPs).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from .dcmtk import _run
from .process import LOOPBACK

__all__ = ["QRResult", "findscu", "getscu", "movescu"]

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})")
_COMMENT = re.compile(r"\(0000,0902\) LO \[(.*)\]")


@dataclass
class QRResult:
    process: subprocess.CompletedProcess[str]
    statuses: list[int]  # every response's status, in order (pending ones included)
    answers: list[Dataset] = field(default_factory=list)  # findscu: the response identifiers
    comments: list[str] = field(default_factory=list)  # Error Comments received

    @property
    def final(self) -> int | None:
        return self.statuses[-1] if self.statuses else None

    @property
    def log(self) -> str:
        return self.process.stdout + self.process.stderr


def _keys(keys: Mapping[str, str]) -> list[str]:
    argv: list[str] = []
    for keyword, value in keys.items():
        argv += ["-k", f"{keyword}={value}" if value else keyword]
    return argv


def _model(model: str) -> str:
    return {"study": "-S", "patient": "-P"}[model]


def findscu(
    port: int,
    keys: Mapping[str, str],
    *,
    called_aet: str,
    outdir: Path,
    model: str = "study",
    calling_aet: str = "FINDSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> QRResult:
    """One C-FIND with ``keys`` (keyword -> value, "" for a return key); answers in ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("rsp*.dcm"):
        old.unlink()
    argv = [
        "findscu",
        "--debug",
        _model(model),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-X",
        "-od",
        str(outdir),
        *_keys(keys),
        *extra_args,
        LOOPBACK,
        str(port),
    ]
    process = _run(argv, timeout)
    answers = [pydicom.dcmread(path) for path in sorted(outdir.glob("rsp*.dcm"))]
    return _result(process, answers)


def movescu(
    port: int,
    keys: Mapping[str, str],
    *,
    called_aet: str,
    destination: str,
    model: str = "study",
    calling_aet: str = "MOVESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> QRResult:
    """One C-MOVE of ``keys`` to the AE ``destination`` (the tool itself receives nothing)."""
    argv = [
        "movescu",
        "--debug",
        _model(model),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-aem",
        destination,
        *_keys(keys),
        *extra_args,
        LOOPBACK,
        str(port),
    ]
    process = _run(argv, timeout)
    return _result(process, [])


def getscu(
    port: int,
    keys: Mapping[str, str],
    *,
    called_aet: str,
    outdir: Path,
    model: str = "study",
    calling_aet: str = "GETSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> QRResult:
    """One C-GET of ``keys``; received objects are written bit-preserving into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    argv = [
        "getscu",
        "--debug",
        _model(model),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "+B",
        "-od",
        str(outdir),
        *_keys(keys),
        *extra_args,
        LOOPBACK,
        str(port),
    ]
    process = _run(argv, timeout)
    return _result(process, [])


def _result(process: subprocess.CompletedProcess[str], answers: list[Dataset]) -> QRResult:
    statuses: list[int] = []
    comments: list[str] = []
    incoming = False
    for line in (process.stdout + process.stderr).splitlines():
        if "INCOMING DIMSE MESSAGE" in line:
            incoming = True
        elif "OUTGOING DIMSE MESSAGE" in line:
            incoming = False
        elif incoming and (found := _STATUS.search(line)):
            statuses.append(int(found.group(1), 16))
        if found_comment := _COMMENT.search(line):
            comments.append(found_comment.group(1))
    return QRResult(process, statuses, answers, comments)
