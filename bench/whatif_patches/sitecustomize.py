"""What-if switches for ``python -m bench.whatif``, loaded into a gateway subprocess only.

Python imports ``sitecustomize`` at start-up from ``sys.path``; ``bench.whatif`` puts this
folder first on the gateway's ``PYTHONPATH`` and names the switches in ``BENCH_WHATIF``
(comma-separated). Each switch removes one cost so its share of the throughput can be
measured; none is a proposal as written (they drop durability on purpose). Nothing happens
when ``BENCH_WHATIF`` is unset, and no gateway code is changed on disk.

* ``nofsync``: ``os.fsync`` does nothing (the spool's file and folder fsyncs).
* ``nodirsync``: ``os.fsync`` of a folder does nothing (files are still fsynced).
* ``sqlite-normal``: ``PRAGMA synchronous=FULL`` becomes ``NORMAL`` (WAL commits not fsynced).
* ``switch-interval``: the GIL switch interval becomes ``BENCH_SWITCH_INTERVAL`` (0.5 ms).

``nodirsync+sqlite-normal`` is the durability Orthanc 1.10's own acknowledgement has (strace
of its C-STORE: one ``fdatasync`` of the stored file; no folder sync; its SQLite index runs
with ``synchronous=NORMAL``, its WAL synced only at checkpoints).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys

_SWITCHES = {s.strip() for s in os.environ.get("BENCH_WHATIF", "").split(",") if s.strip()}


def _nofsync() -> None:
    os.fsync = lambda fd: None


def _nodirsync() -> None:
    original = os.fsync

    def fsync(fd):  # type: ignore[no-untyped-def]
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return None
        return original(fd)

    os.fsync = fsync


def _sqlite_normal() -> None:
    original = sqlite3.connect

    class Connection(sqlite3.Connection):
        def execute(self, sql, *args):  # type: ignore[no-untyped-def, override]
            if sql.replace(" ", "").upper() == "PRAGMA SYNCHRONOUS=FULL":
                sql = "PRAGMA synchronous=NORMAL"
            return super().execute(sql, *args)

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("factory", Connection)
        return original(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]


def _switch_interval() -> None:
    sys.setswitchinterval(float(os.environ.get("BENCH_SWITCH_INTERVAL", "0.0005")))


_APPLY = {
    "nofsync": _nofsync,
    "nodirsync": _nodirsync,
    "sqlite-normal": _sqlite_normal,
    "switch-interval": _switch_interval,
}

for _name in sorted(_SWITCHES):
    if _name not in _APPLY:
        sys.stderr.write(f"bench whatif: unknown switch {_name!r}\n")
        continue
    _APPLY[_name]()
if _SWITCHES:
    sys.stderr.write(f"bench whatif: applied {sorted(_SWITCHES)}\n")
