"""The DIMSE listening server: TLS handshakes off the accept loop, and no read without a deadline.

Why not `AE.start_server(ssl_context=...)`: pynetdicom wraps an accepted socket in its single
accept loop and handshakes right there, on a socket without a timeout. One client that opens a
TCP connection and sends nothing (or a slow or broken TLS client) would stop the listener for
everybody. Here the accept loop only wraps the socket; the handshake runs in the connection's
own thread, bounded by `handshake_timeout`, and a failed handshake (no certificate, an
untrusted one, plain DICOM on the TLS port) is logged and reported to `on_refused`.

Why a socket timeout: pynetdicom reads a PDU with blocking `recv` calls until it has as many
bytes as the header announced. A peer that sends half a PDU header, or announces 5000 bytes
and sends 50, would hold that connection's threads forever (no ARTIM or idle timer runs while
the reader is blocked). Every accepted socket therefore gets `dimse.network_timeout` as its
timeout: a peer that stalls mid-PDU that long is disconnected.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved off the accept loop."""

    handshake_timeout: float = 30.0
    stall_timeout: float = 60.0  # longest wait for the rest of a PDU (dimse.network_timeout)
    on_refused: Callable[[str, str], None] | None = None  # (peer address, reason)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is None:
            return client, address
        client.settimeout(self.handshake_timeout)
        wrapped = self.ssl_context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:
                peer = str(client_address[0]) if isinstance(client_address, tuple) else "?"
                reason = _handshake_failure(exc)
                log.warning("refused a DIMSE TLS connection from %s: %s", peer, reason)
                if self.on_refused is not None:
                    try:
                        self.on_refused(peer, reason)
                    except Exception:
                        log.exception("could not report the refused TLS connection")
                self.shutdown_request(request)
                return
        if isinstance(request, socket.socket):
            request.settimeout(self.stall_timeout)
        super().process_request_thread(request, client_address)


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    evt_handlers: list[EventHandlerType],
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float,
    stall_timeout: float,
    on_refused: Callable[[str, str], None] | None = None,
) -> GuardedAssociationServer:
    """Start the listener in background threads, as `AE.start_server(block=False)` does."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=GuardedAssociationServer,
    )
    assert isinstance(server, GuardedAssociationServer)
    server.handshake_timeout = handshake_timeout
    server.stall_timeout = stall_timeout
    server.on_refused = on_refused
    thread = threading.Thread(target=server.serve_forever, name="dimse-listener", daemon=True)
    thread.start()
    ae._servers.append(server)  # pynetdicom's shutdown() removes it from this list
    return server


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the time limit"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc}"


PDU_LIMIT_FLOOR = 1 << 20  # association requests with many contexts stay well below this


def limit_pdu_length(assoc: Any, max_pdu: int) -> None:
    """Refuse a PDU longer than we accept before reading it, and drop the connection.

    pynetdicom reads as many bytes as a PDU header announces into memory, and it does so
    before the association is negotiated. A peer that announces 4 GiB and keeps sending
    would grow the process without limit. Peers must keep P-DATA-TF PDUs within the maximum
    length we announce (`dimse.max_pdu`); association PDUs get at least 1 MiB.
    """
    transport = getattr(assoc.dul, "socket", None)
    if transport is None:
        return
    limit = max(max_pdu, PDU_LIMIT_FLOOR) + 1024
    read = transport.recv

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            peer = getattr(getattr(assoc, "requestor", None), "address", "?")
            log.warning(
                "dropped DIMSE connection from %s: it announced a %d-byte PDU (limit %d)",
                peer,
                nr_bytes,
                limit,
            )
            raise OSError(f"PDU of {nr_bytes} bytes announced; the limit is {limit}")
        data: bytearray = read(nr_bytes)
        return data

    transport.recv = recv
