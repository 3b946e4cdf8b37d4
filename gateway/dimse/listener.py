"""The DIMSE listening socket: accept, hand each connection to its own thread, stop cleanly.

The accept loop only accepts (and wraps the socket for TLS without handshaking); everything
that can wait on a peer (the TLS handshake, bounded by `handshake_timeout`, and the
association itself, gateway/dimse/association.py) runs in the connection's thread, so one slow
or silent client never stops the listener for everybody. A failed handshake (no certificate,
an untrusted one, plain DICOM on the TLS port) is logged and reported to `on_tls_refused`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.dimse.association import AssociationLoop, AssociationServices, Limits

log = logging.getLogger(__name__)

_ACCEPT_POLL = 0.5  # how often the accept loop looks at the stop flag


class DimseListener:
    """Listens on one address; `start` binds and returns, `shutdown` stops and disconnects."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        services: AssociationServices,
        limits: Limits,
        staging_dir: Path,
        max_associations: int,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 30.0,
        on_tls_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._address = address
        self._services = services
        self._limits = limits
        self._staging_dir = staging_dir
        self._max_associations = max_associations
        self._ssl_context = ssl_context
        self._handshake_timeout = handshake_timeout
        self._on_tls_refused = on_tls_refused
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    @property
    def server_address(self) -> tuple[str, int]:
        assert self._socket is not None, "the listener is not started"
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        sock = socket.create_server(self._address, backlog=128, reuse_port=False)
        sock.settimeout(_ACCEPT_POLL)
        self._socket = sock
        self._thread = threading.Thread(
            target=self._accept_loop, name="dimse-listener", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting, disconnect every open association and wait for the accept loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_ACCEPT_POLL * 4)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        assert self._socket is not None
        while not self._stop.is_set():
            try:
                client, address = self._socket.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("DIMSE listener could not accept a connection: %s", exc)
                continue
            peer = str(address[0])
            with self._lock:
                busy = len(self._connections) >= self._max_associations
                self._connections.add(client)
            threading.Thread(
                target=self._serve, args=(client, peer, busy), name=f"dimse-{peer}", daemon=True
            ).start()

    def _serve(self, client: socket.socket, peer: str, busy: bool) -> None:
        connection: socket.socket | None = None
        try:
            connection = self._secure(client, peer)
            if connection is None:
                return
            # Without this, every small C-STORE response waits for the peer's delayed ACK.
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            AssociationLoop(
                connection, peer, self._services, self._limits, self._staging_dir, busy=busy
            ).run()
        except Exception:
            log.exception("DIMSE connection from %s failed unexpectedly", peer)
        finally:
            with self._lock:
                self._connections.discard(client)
                if connection is not None:
                    self._connections.discard(connection)
            with contextlib.suppress(OSError):
                (connection or client).close()

    def _secure(self, client: socket.socket, peer: str) -> socket.socket | None:
        """The TLS-wrapped socket after a good handshake, the socket itself without TLS."""
        if self._ssl_context is None:
            return client
        client.settimeout(self._handshake_timeout)
        # Handshake explicitly: wrap_socket's own handshake closes the socket on failure,
        # before the refusal is logged and audited.
        wrapped: ssl.SSLSocket | None = None
        try:
            wrapped = self._ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
            with self._lock:
                self._connections.add(wrapped)
            wrapped.do_handshake()
        except (OSError, ValueError) as exc:
            reason = _handshake_failure(exc)
            log.warning("refused a DIMSE TLS connection from %s: %s", peer, reason)
            if self._on_tls_refused is not None:
                try:
                    self._on_tls_refused(peer, reason)
                except Exception:
                    log.exception("could not report the refused TLS connection")
            if wrapped is not None:
                with self._lock:
                    self._connections.discard(wrapped)
                with contextlib.suppress(OSError):
                    wrapped.close()
            return None
        return wrapped


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the time limit"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc}"
