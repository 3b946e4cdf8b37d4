"""Limits of the HTTP front end against slow, huge and too many requests (`http.limits`).

uvicorn bounds what it is told to: the size of a request head (h11's incomplete-event limit),
the number of concurrent connections/requests (`limit_concurrency`, 503 beyond) and idle
keep-alive connections (`timeout_keep_alive`). It has no deadline for a request head that
trickles in a byte at a time, nor for a body that stops arriving or a client that stops
reading the response (slow-loris and slow-read). `GuardedH11Protocol` adds those three timers
to uvicorn's h11 protocol; a peer that trips one is disconnected and logged, and the handler
sees an ordinary client disconnect (so a half-received STOW-RS body is discarded as usual).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.exceptions import ConfigError

log = logging.getLogger(__name__)

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    max_connections: int = 1000  # concurrent connections/requests; more get 503
    max_header_bytes: int = 16_384  # request line + headers; more gets 431 (or h11's 400)
    header_timeout: float = 10.0  # a request head must be complete this long after it starts
    idle_timeout: float = 60.0  # longest stall of a request body upload or response download
    keep_alive_timeout: float = 30.0  # an idle keep-alive connection is closed after this


_KEYS = {
    "max_connections",
    "max_header_bytes",
    "header_timeout",
    "idle_timeout",
    "keep_alive_timeout",
}


def parse_http_limits(raw: object, key: str = "http.limits") -> HttpLimits:
    """Validate `http.limits`; every key is optional."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be a mapping (key: value lines)")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}"
        )
    defaults = HttpLimits()

    def number(name: str, minimum: float, maximum: float) -> float:
        value = raw.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}.{name} must be a number, not {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(f"{key}.{name} is {value}; use a value from {minimum} to {maximum}")
        return float(value)

    return HttpLimits(
        max_connections=int(number("max_connections", 1, 1_000_000)),
        max_header_bytes=int(number("max_header_bytes", 1024, 1 << 20)),
        header_timeout=number("header_timeout", 0.1, 3600),
        idle_timeout=number("idle_timeout", 0.1, 86_400),
        keep_alive_timeout=number("keep_alive_timeout", 0.1, 3600),
    )


def uvicorn_options(limits: HttpLimits) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that apply `limits`."""
    return {
        "http": guarded_protocol(limits),
        "limit_concurrency": limits.max_connections,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_keep_alive": limits.keep_alive_timeout,
    }


def guarded_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with deadlines for request heads and stalled transfers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _upload_timer: asyncio.TimerHandle | None = None
        _download_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _head_tail = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._head_timer = self.loop.call_later(limits.header_timeout, self._head_expired)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and not self._head_within_limit(data):
                return
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.IDLE:
                # Part of a request head arrived: the rest must follow within the deadline,
                # however slowly it trickles (a timer per byte would let a slow-loris live).
                if self._head_timer is None and not self.transport.is_closing():
                    self._head_timer = self.loop.call_later(
                        limits.header_timeout, self._head_expired
                    )
            else:
                _cancel(self._head_timer)
                self._head_timer = None
            _cancel(self._upload_timer)
            self._upload_timer = None
            if state is h11.SEND_BODY and not self.transport.is_closing():
                self._upload_timer = self.loop.call_later(limits.idle_timeout, self._upload_stalled)

        def connection_lost(self, exc: Exception | None) -> None:
            _cancel(self._head_timer)
            self._head_timer = None
            _cancel(self._upload_timer)
            self._upload_timer = None
            _cancel(self._download_timer)
            self._download_timer = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            _cancel(self._head_timer)
            self._head_timer = None
            super().on_response_complete()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._download_timer is None:
                self._download_timer = self.loop.call_later(
                    limits.idle_timeout, self._download_stalled
                )

        def resume_writing(self) -> None:
            _cancel(self._download_timer)
            self._download_timer = None
            super().resume_writing()

        def _head_within_limit(self, data: bytes) -> bool:
            # h11 bounds only a head that is still incomplete in its buffer; a large head that
            # arrives in one read would be parsed whatever its size, so count here.
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + 4 - len(self._head_tail))
            if size > limits.max_header_bytes:
                log.warning(
                    "refused HTTP request from %s: request head larger than %d bytes",
                    _peer(self.client),
                    limits.max_header_bytes,
                )
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()
                return False
            if end < 0:
                self._head_bytes += len(data)
                self._head_tail = window[-3:]
            else:
                self._head_bytes, self._head_tail = 0, b""
            return True

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a response is still being produced; uvicorn handles what follows
            log.warning(
                "closed HTTP connection from %s: no complete request head within %.0f s",
                _peer(self.client),
                limits.header_timeout,
            )
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

        def _upload_stalled(self) -> None:
            self._upload_timer = None
            if self.transport.is_closing():
                return
            if self.flow.read_paused:
                # We stopped reading (the handler is busy), so the client cannot send.
                self._upload_timer = self.loop.call_later(limits.idle_timeout, self._upload_stalled)
                return
            log.warning(
                "closed HTTP connection from %s: request body stalled for %.0f s",
                _peer(self.client),
                limits.idle_timeout,
            )
            self.transport.close()

        def _download_stalled(self) -> None:
            self._download_timer = None
            if not self.transport.is_closing():
                log.warning(
                    "closed HTTP connection from %s: response not read for %.0f s",
                    _peer(self.client),
                    limits.idle_timeout,
                )
                self.transport.abort()

    return GuardedH11Protocol


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"
