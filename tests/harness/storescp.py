"""DCMTK ``storescp`` as a minimal, byte-faithful DIMSE PACS for end-to-end tests.

``storescp`` writes each received object to one file and does nothing else, which makes it the
cleanest witness of what the gateway put on the wire. It is started as::

    storescp --bit-preserving +xa -od OUTDIR -aet AET -fe .dcm [extra_args] PORT

* ``--bit-preserving`` (``+B``): write the dataset exactly as received; no re-encoding.
* ``+xa`` (``--accept-all``): accept every transfer syntax DCMTK knows, compressed included,
  so compressed objects arrive compressed.
* File names come from the default ``-uf`` (``--default-filenames``): ``<MOD>.<SOPInstanceUID>``
  where ``<MOD>`` is a short prefix DCMTK derives from the SOP class (``CT``, ``MR``, ``SC``,
  ``SCw``, ``SRi``, ``XA3``, ``UNKNOWN``...; letters and digits, never a dot); ``-fe .dcm``
  appends the extension. A second copy of the same SOP instance silently overwrites the first.
* storescp runs single-process by default and serves one association at a time; further
  associations wait in the listen backlog. Pass ``extra_args=["--fork"]`` for one child per
  association (the children share the process group and are cleaned up with it).
* Only SOP classes DCMTK 3.6.7 knows are accepted. That covers every file of
  :func:`~tests.harness.data.pydicom_storage_files` (CT, MR, CR, US, SC, SEG, Basic Text and
  Comprehensive SR, 12-lead ECG, RT Plan), but 13 of pynetdicom 3.0.4's 170 storage classes are
  refused at association time (no presentation context): ConfocalMicroscopy(TiledPyramidal),
  Enhanced(Continuous)RTImage, General32bitECGWaveform, HeightMap/LabelMapSegmentation,
  PhotoacousticImage, RTPatientPositionAcquisitionInstruction,
  VariableModalityLUTSoftcopyPresentationState, WaveformAcquisitionPresentationState,
  WaveformAnnotationSR and WaveformPresentationState. ``extra_args=["-pm"]``
  (``--promiscuous``) accepts them too (files named ``UNKNOWN.<uid>.dcm``).
* A file appears under its final name while it is still being received: wait for the sender's
  success before reading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

from .env import native_program
from .process import ManagedProcess, PeerProcess, free_port, wait_for_port

__all__ = ["STORESCP_SUFFIX", "StoreSCP"]

STORESCP_SUFFIX = ".dcm"


class StoreSCP(PeerProcess):
    """A running ``storescp`` writing into ``outdir``; logs go next to it in ``outdir.parent``.

    The port is picked on the first :meth:`start` and kept across restarts.
    """

    _label = "storescp"
    stop_timeout = 5.0

    def __init__(
        self,
        outdir: Path,
        *,
        aet: str = "STORESCP",
        extra_args: Sequence[str] = (),
        logdir: Path | None = None,
    ) -> None:
        self.outdir = Path(outdir)
        self.aet = aet
        self.extra_args = tuple(extra_args)
        self.logdir = Path(logdir) if logdir is not None else self.outdir.parent
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    @property
    def port(self) -> int:
        """The DICOM port storescp listens on (all interfaces; use 127.0.0.1)."""
        if self._port is None:
            raise RuntimeError("StoreSCP has not been started")
        return self._port

    def start(self, timeout: float = 10.0) -> Self:
        """Start storescp and wait until its port accepts connections."""
        if self._port is None:
            self._port = free_port()
        self.outdir.mkdir(parents=True, exist_ok=True)
        program = native_program("storescp")
        if program is None:
            raise FileNotFoundError("DCMTK storescp is not installed (apt install dcmtk)")
        argv = [
            program,
            "--verbose",
            "--bit-preserving",
            "+xa",
            "-od",
            str(self.outdir),
            "-aet",
            self.aet,
            "-fe",
            STORESCP_SUFFIX,
            *self.extra_args,
            str(self._port),
        ]
        self._process = ManagedProcess(
            argv, workdir=self.logdir, name=f"storescp-{self.aet}", env={"TCP_NODELAY": "1"}
        ).start()
        try:
            wait_for_port(self._port, timeout, process=self._process)
        except BaseException:
            self._process.kill()
            raise
        return self

    def received_files(self) -> list[Path]:
        """Files written so far, sorted by name."""
        if not self.outdir.is_dir():
            return []
        return sorted(
            p for p in self.outdir.iterdir() if p.is_file() and p.name.endswith(STORESCP_SUFFIX)
        )

    def received_sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs taken from the received file names."""
        return {uid for p in self.received_files() if (uid := _uid_from_name(p.name))}

    def file_for(self, sop_instance_uid: str) -> Path | None:
        """The file holding ``sop_instance_uid``, or ``None`` if it has not arrived."""
        for path in self.received_files():
            if _uid_from_name(path.name) == sop_instance_uid:
                return path
        return None


def _uid_from_name(name: str) -> str | None:
    # "CT.1.2.3.dcm" -> "1.2.3". Matching the whole remainder (not a glob) keeps UID 1.2.3 from
    # matching a file for 9.1.2.3.
    stem = name.removesuffix(STORESCP_SUFFIX)
    prefix, sep, uid = stem.partition(".")
    return uid if sep and prefix and uid else None
