"""Child processes for real-peer tests: free ports, readiness waits and guaranteed cleanup.

Every peer a test needs (Orthanc, storescp, the gateway itself) is a real program started on
127.0.0.1. Two things make such tests trustworthy or flaky:

* **Cleanup.** A peer left running after a test holds a port and its storage and poisons the
  next run. Each :class:`ManagedProcess` therefore starts in its own session (so its process
  group id equals its pid and a whole tree of children can be signalled by that id), is stopped by
  its fixture, is stopped again by an :mod:`atexit` hook as a safety net, and - where
  ``setpriv`` exists - gets ``SIGKILL`` from the kernel if the test runner itself dies.
* **Readiness.** A started process is not a listening process. :func:`wait_for_port` polls a TCP
  connect and gives up early, with the log tail, when the process has already died.

Nothing here signals a process by name; only pids this module started are ever signalled.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "ProcessDiedError",
    "free_port",
    "wait_for_port",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
"""The only address tests talk to; peers that bind every interface are still reached here."""

T = TypeVar("T")

_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


class ProcessDiedError(RuntimeError):
    """A managed process exited while we were waiting for it to become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now.

    The kernel picks the port (bind to port 0). Ports handed out earlier in this interpreter are
    never handed out again, so two peers started back to back in one test cannot be given the
    same port before the first one has bound it. A small race with unrelated programs remains;
    it is the accepted price of not hard-coding ports.
    """
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    End-to-end tests observe asynchronous effects (a forwarded instance arriving at a PACS);
    polling with a deadline keeps them fast when things work and bounded when they do not.
    Raises :class:`TimeoutError` naming ``message`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def wait_for_port(
    port: int,
    timeout: float = 10.0,
    *,
    host: str = LOOPBACK,
    process: ManagedProcess | None = None,
) -> None:
    """Block until a TCP connect to ``host:port`` succeeds.

    If ``process`` is given and exits first, raise :class:`ProcessDiedError` with its log tail
    at once instead of waiting out the timeout: a peer that failed to start (bad config, port
    taken) then reports why.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.alive:
            raise ProcessDiedError(
                f"{process.name} exited with {process.returncode} before port {port} opened; "
                f"log tail:\n{process.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() >= deadline:
            tail = f"; log tail:\n{process.log_tail()}" if process is not None else ""
            raise TimeoutError(f"port {host}:{port} did not open within {timeout:.1f}s{tail}")
        time.sleep(0.05)


class ManagedProcess:
    """One child process, its log file, and the promise that it will be gone afterwards.

    stdout and stderr go, merged, to ``workdir / f"{name}.log"``; the log is appended to across
    restarts so a test that restarts a peer keeps its whole history. ``env`` entries are added to
    (and override) the inherited environment. Use as a context manager, or call :meth:`start` and
    :meth:`stop` yourself (a fixture does).

    ``parent_death_signal``: when ``setpriv`` is available the child is exec'd through
    ``setpriv --pdeathsig KILL`` so the kernel kills it if the test runner dies without running
    any cleanup (``SIGKILL`` of pytest, a CI timeout). Linux delivers that signal when the *thread*
    that started the child exits, so start long-lived peers from the main thread (fixtures do), or
    pass ``parent_death_signal=False``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workdir: Path,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        parent_death_signal: bool = True,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv: tuple[str, ...] = tuple(str(a) for a in argv)
        self.workdir = Path(workdir)
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env or {})
        self.cwd = Path(cwd) if cwd is not None else self.workdir
        self.parent_death_signal = parent_death_signal
        self.log_path = self.workdir / f"{self.name}.log"
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process in a new session; raise if this object already runs one."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {' '.join(self.argv)}\n".encode())
        self._log.flush()
        argv: list[str] = list(self.argv)
        setpriv = shutil.which("setpriv") if self.parent_death_signal else None
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        self._popen = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _register(self)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Send SIGTERM to the process group, wait ``timeout`` s, then SIGKILL it.

        Returns the exit code (negative for a signal), or ``None`` if never started. Safe to call
        repeatedly. Grandchildren left in the group (``storescp --fork`` children) are killed too.
        """
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait(timeout=30)
            self._kill_leftovers()
        self._finish()
        return popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process group at once, as a crash would; returns the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._signal_group(signal.SIGKILL)
            popen.wait(timeout=30)
            self._kill_leftovers()
        self._finish()
        return popen.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself and return its exit code."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.wait(timeout=timeout)

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's pid (also its process group and session id)."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def alive(self) -> bool:
        """True while the started process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code once exited (negative: killed by that signal), else ``None``."""
        return None if self._popen is None else self._popen.poll()

    def log_text(self) -> str:
        """Everything the process wrote to stdout/stderr so far (all starts), decoded leniently."""
        if self._log is not None:
            with contextlib.suppress(ValueError):
                self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._popen.pid} alive={self.alive}" if self._popen else "not started"
        return f"<ManagedProcess {self.name} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> None:
        # The child leads its own session, so its pid names its process group. The leader is
        # unreaped here, so that pid cannot have been reused by an unrelated process.
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def _kill_leftovers(self) -> None:
        # Called right after *we* reaped the leader: members left in its group (forked workers)
        # would otherwise outlive it. Not done for a leader that died on its own long before
        # stop(): its pid might name someone else's group by then.
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def _finish(self) -> None:
        self._close_log()
        _unregister(self)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


def _register(proc: ManagedProcess) -> None:
    with _live_lock:
        _live.add(proc)


def _unregister(proc: ManagedProcess) -> None:
    with _live_lock:
        _live.discard(proc)


@atexit.register
def _stop_all_at_exit() -> None:
    """Safety net: a test that forgot a fixture must not leave a peer running."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(timeout=3.0)


class PeerProcess:
    """The lifecycle every server the tests run shares (Orthanc, storescp, SeaweedFS, gateway).

    A subclass writes its config, starts its ManagedProcess in `start()` and stores it in
    `_process`; stop, kill, restart, pid, liveness, log and the context-manager protocol are
    the same for all of them and live here.
    """

    _process: ManagedProcess | None = None
    _label = "process"
    stop_timeout = 15.0

    def start(self, timeout: float = 30.0) -> Self:
        raise NotImplementedError  # each peer knows how to start and when it is ready

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful stop (SIGTERM), SIGKILL after `timeout`; returns the exit code."""
        if self._process is None:
            return None
        return self._process.stop(self.stop_timeout if timeout is None else timeout)

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would; returns the exit code."""
        return self._process.kill() if self._process is not None else None

    def restart(self, timeout: float | None = None) -> Self:
        """Stop, then start again on the same ports and storage."""
        self.stop()
        return self.start() if timeout is None else self.start(timeout)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self._process is not None and self._process.alive

    @property
    def pid(self) -> int:
        """Pid of the running process."""
        if self._process is None:
            raise RuntimeError(f"{self._label} has not been started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has exited, else None."""
        return self._process.returncode if self._process is not None else None

    def log_text(self) -> str:
        """The process's combined stdout/stderr across all starts."""
        return self._process.log_text() if self._process is not None else ""

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
