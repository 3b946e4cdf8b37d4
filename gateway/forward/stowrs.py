"""STOW-RS sender: stores batches of instances on a DICOMweb origin server (PS3.18 10.5).

A batch (one study) becomes one or more ``POST {url}/studies`` requests. Each body is a
``multipart/related; type="application/dicom"`` stream read from the spool as it is sent
(:mod:`gateway.forward.multipart`); a batch is split so that no body exceeds
``max_batch_bytes`` (an instance larger than that travels alone).

How a response settles each instance
------------------------------------
Whatever the HTTP status, a body that is a DICOM JSON Store Instances Response is read per
instance. Orthanc's DICOMweb plugin (1.7) always sends an *empty* FailedSOPSequence, and answers
400 when one part is not DICOM while still listing the stored ones in ReferencedSOPSequence, so
success is judged per instance from ReferencedSOPSequence, never from the status code alone.

====================================  ==========  ==============================================
The instance is found in              Outcome     status text
====================================  ==========  ==============================================
ReferencedSOPSequence                 DELIVERED   ``HTTP 200``
... with WarningReason (0008,1196)    DELIVERED   ``HTTP 202 0xB000`` (warning=True)
FailedSOPSequence                     see below   ``HTTP 409 0xA700``
neither, after a 2xx                  TRANSIENT   ``HTTP 200``: the destination did not mention it
neither, after a 4xx/5xx              see HTTP    ``HTTP 400``
====================================  ==========  ==============================================

==============================================  ==========  ====================================
FailureReason (0008,1197)                       Outcome     why
==============================================  ==========  ====================================
0xA700-0xA7FF out of resources                  TRANSIENT   disk or memory frees up
0x0110 processing failure                       TRANSIENT   a server-side error, often passing
0x0111 duplicate SOP instance                   DELIVERED   it is there already; warning=True so
                                                            the duplicate is counted
0x0122 SOP class not supported                  PERMANENT   the server's configuration must change
0x0124 not authorized                           PERMANENT   likewise
0xA900-0xA9FF data set does not match SOP class PERMANENT   the object itself is wrong
0xC122 transfer syntax not supported            PERMANENT   we never transcode
other 0xC000-0xCFFF (cannot understand)         TRANSIENT   servers put internal errors here; the
                                                            worker's attempt limit dead-letters
                                                            an object that keeps failing
other 0x01xx, 0x02xx                            PERMANENT   PS3.7 Annex C refusals (invalid
                                                            instance, mistyped argument, ...)
missing or anything else                        TRANSIENT   unknown: let the attempt limit decide
==============================================  ==========  ====================================

A body that is not DICOM JSON (empty, XML, truncated): after 202 every instance is TRANSIENT
(the server says some failed but not which), after any other 2xx every instance is DELIVERED,
otherwise the HTTP status decides for all, and the detail quotes the body's first 300 characters.

========================================  ==========
HTTP status, or no answer at all           Outcome
========================================  ==========
in ``permanent_http_statuses``            PERMANENT
in ``transient_http_statuses``            TRANSIENT
408, 429, 5xx                             TRANSIENT
other 4xx, 3xx (redirects not followed)   PERMANENT
refused, reset, timed out                 TRANSIENT
========================================  ==========

An instance the spool cannot read is TRANSIENT (status ``spool``), one whose stored size differs
from the database's is PERMANENT (``spool``); the body was cut short, so nothing of that request
was stored, and the request is sent again without it.

A 401 calls ``on_unauthorized()`` (so a token cache can refresh) and repeats that request once
with fresh ``auth()`` headers; a second 401 is then settled like any other status. A connection
that fails before an answer (refused, or a kept-alive connection the server had closed) is
retried once at once: storing the same instance twice is harmless. Retrying later, with
backoff, is the worker's job.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import httpx

from gateway.exceptions import ConfigError, GatewayError
from gateway.forward.base import Outcome, OutgoingInstance, ProbeResult, SendResult
from gateway.forward.multipart import DicomMultipartBody, PartSourceError, part_overhead
from gateway.forward.stow_response import (
    failure_outcome,
    parse_store_response,
    reason_text,
)

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "StowRsSender", "failure_outcome"]


DEFAULT_MAX_BATCH_BYTES = 64 << 20
_MAX_RESPONSE_BYTES = 16 << 20  # a response for thousands of instances is well below this
_EXCERPT_CHARS = 300
_PART_OVERHEAD = part_overhead("0" * 32)  # DicomMultipartBody boundaries are 32 characters


@dataclass(frozen=True, slots=True)
class _Reply:
    """The server answered: its status and (at most _MAX_RESPONSE_BYTES of) its body."""

    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class _NoReply:
    """No HTTP answer: the connection failed, timed out, or a body part could not be read."""

    status: str
    detail: str
    retry_at_once: bool = False
    part_error: PartSourceError | None = None


class StowRsSender:
    """Sends batches to a DICOMweb server with STOW-RS; see the module docstring for outcomes."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        timeout: float = 60.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        auth: Callable[[], dict[str, str]] | None = None,
        on_unauthorized: Callable[[], None] | None = None,
        transient_http_statuses: Collection[int] = (),
        permanent_http_statuses: Collection[int] = (),
        verify: bool | str = True,
        client: httpx.Client | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"destination {name!r}: url must start with http:// or https://")
        if timeout <= 0:
            raise ConfigError(f"destination {name!r}: timeout must be positive, got {timeout}")
        if max_batch_bytes <= 0:
            raise ConfigError(
                f"destination {name!r}: max_batch_bytes must be positive, got {max_batch_bytes}"
            )
        both = set(transient_http_statuses) & set(permanent_http_statuses)
        if both:
            raise ConfigError(
                f"destination {name!r}: HTTP statuses {sorted(both)} are listed as both "
                "transient and permanent"
            )
        self.name = name
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_batch_bytes = max_batch_bytes
        self._studies_url = f"{self.url}/studies"
        self._auth = auth
        self._on_unauthorized = on_unauthorized
        self._transient_statuses = frozenset(transient_http_statuses)
        self._permanent_statuses = frozenset(permanent_http_statuses)
        self._verify = _ssl_verify(name, verify)
        self._client = client
        self._owns_client = client is None

    # -- Sender protocol ---------------------------------------------------------------------

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        """Store every instance of ``batch``; one result per instance, in batch order."""
        settled: dict[int, SendResult] = {}
        for request_instances in self._split(batch):
            for result in self._store_instances(request_instances):
                settled[result.delivery_id] = result
        return [settled[inst.delivery_id] for inst in batch]

    def probe(self) -> ProbeResult:
        """The idle probe: one QIDO-RS request (gateway/forward/qido_probe.py)."""
        from gateway.forward.qido_probe import search_one_study

        return search_one_study(
            self._get_client(),
            self.url,
            timeout=self.timeout,
            auth=self._auth,
            on_unauthorized=self._on_unauthorized,
            transient=lambda code: self._http_outcome(code) is Outcome.TRANSIENT,
        )

    def close(self) -> None:
        """Close the connection pool if this sender created it; it is re-created on demand."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    # -- one request -------------------------------------------------------------------------

    def _split(self, batch: Sequence[OutgoingInstance]) -> list[list[OutgoingInstance]]:
        requests: list[list[OutgoingInstance]] = []
        current: list[OutgoingInstance] = []
        current_bytes = 0
        for inst in batch:
            cost = inst.size + _PART_OVERHEAD
            if current and current_bytes + cost > self.max_batch_bytes:
                requests.append(current)
                current, current_bytes = [], 0
            current.append(inst)
            current_bytes += cost
        if current:
            requests.append(current)
        return requests

    def _store_instances(self, instances: Sequence[OutgoingInstance]) -> list[SendResult]:
        """One request (two after a 401); an instance the spool cannot produce is left out."""
        culprits: list[SendResult] = []
        pending = list(instances)
        while pending:
            reply = self._exchange(pending)
            if isinstance(reply, _NoReply) and reply.part_error is not None:
                # Nothing was stored (the body was cut short): settle the culprit on its own
                # and send the others again without it.
                culprits.append(_culprit_result(reply.part_error))
                pending = [i for i in pending if i.delivery_id != reply.part_error.delivery_id]
                continue
            if (
                isinstance(reply, _Reply)
                and reply.status_code == 401
                and self._on_unauthorized is not None
            ):
                try:
                    self._on_unauthorized()
                except GatewayError as exc:
                    detail = f"refreshing credentials after HTTP 401 failed: {exc}"
                    reply = _NoReply("HTTP 401", detail)
                else:
                    reply = self._exchange(pending)
            if isinstance(reply, _NoReply):
                return culprits + self._settle_unanswered(pending, reply)
            return culprits + self._settle_answered(pending, reply)
        return culprits

    def _exchange(self, instances: Sequence[OutgoingInstance]) -> _Reply | _NoReply:
        reply = self._post(instances)
        if isinstance(reply, _NoReply) and reply.retry_at_once:
            reply = self._post(instances)
        return reply

    def _post(self, instances: Sequence[OutgoingInstance]) -> _Reply | _NoReply:
        """POST one body. The one place where httpx and credential errors become results."""
        body = DicomMultipartBody(instances)
        try:
            headers = {
                "Content-Type": body.content_type,
                "Content-Length": str(body.content_length),
                "Accept": "application/dicom+json",
                # The response lists every instance; compressing it costs the server and us
                # CPU for a few kilobytes on a request of megabytes.
                "Accept-Encoding": "identity",
            }
            if self._auth is not None:
                headers.update(self._auth())
            client = self._get_client()
            request = client.build_request(
                "POST", self._studies_url, headers=headers, content=body, timeout=self.timeout
            )
            response = client.send(request, stream=True)
            try:
                payload = _read_at_most(response, _MAX_RESPONSE_BYTES)
            finally:
                response.close()
            return _Reply(response.status_code, payload)
        except PartSourceError as exc:
            return _NoReply("not sent", str(exc), part_error=exc)
        except httpx.TimeoutException as exc:
            return _NoReply("timeout", f"{self._studies_url}: {type(exc).__name__}: {exc}")
        except httpx.ConnectError as exc:
            status = "connection refused" if "refused" in str(exc).lower() else "connect failed"
            detail = f"cannot connect to {self._studies_url}: {exc}"
            return _NoReply(status, detail, retry_at_once=True)
        except httpx.RemoteProtocolError as exc:
            detail = f"{self._studies_url} broke the HTTP exchange: {exc}"
            return _NoReply("connection closed", detail, retry_at_once=True)
        except httpx.HTTPError as exc:
            return _NoReply("connection error", f"{self._studies_url}: {type(exc).__name__}: {exc}")
        except GatewayError as exc:  # from the auth() callback
            return _NoReply("no credentials", f"cannot obtain credentials: {exc}")
        finally:
            body.close()

    def _get_client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                verify=self._verify, follow_redirects=False, timeout=self.timeout
            )
        return self._client

    # -- settling ----------------------------------------------------------------------------

    def _settle_unanswered(
        self, instances: Sequence[OutgoingInstance], reply: _NoReply
    ) -> list[SendResult]:
        if reply.part_error is not None:
            # Only after a 401 retry: the first pass read every part, the second did not.
            culprit = _culprit_result(reply.part_error)
            why = f"not sent: the request was cut short by delivery {culprit.delivery_id}"
            return [
                culprit
                if inst.delivery_id == culprit.delivery_id
                else SendResult(inst.delivery_id, Outcome.TRANSIENT, "not sent", why)
                for inst in instances
            ]
        return [
            SendResult(inst.delivery_id, Outcome.TRANSIENT, reply.status, reply.detail)
            for inst in instances
        ]

    def _settle_answered(
        self, instances: Sequence[OutgoingInstance], reply: _Reply
    ) -> list[SendResult]:
        code = reply.status_code
        http = f"HTTP {code}"
        answer = parse_store_response(reply.body)
        success = 200 <= code < 300
        if success and answer is None:
            if code == 202:
                detail = (
                    "HTTP 202 (stored with warnings or failures) without a readable Store "
                    f"Instances Response: {_excerpt(reply.body)}"
                )
                return [
                    SendResult(i.delivery_id, Outcome.TRANSIENT, http, detail) for i in instances
                ]
            return [SendResult(i.delivery_id, Outcome.DELIVERED, http) for i in instances]

        by_status = self._http_outcome(code)
        status_detail = f"{self._studies_url} answered {http}: {_excerpt(reply.body)}"
        results = []
        for inst in instances:
            uid = inst.sop_instance_uid
            if answer is not None and uid in answer.referenced:
                warning = answer.referenced[uid]
                if warning is None:
                    results.append(SendResult(inst.delivery_id, Outcome.DELIVERED, http))
                else:
                    results.append(
                        SendResult(
                            inst.delivery_id,
                            Outcome.DELIVERED,
                            f"{http} 0x{warning:04X}",
                            f"stored with warning 0x{warning:04X} ({reason_text(warning)})",
                            warning=True,
                        )
                    )
            elif answer is not None and uid in answer.failed:
                results.append(_failed_result(inst, http, answer.failed[uid]))
            elif success:
                detail = f"{http} but the response did not mention this instance"
                results.append(SendResult(inst.delivery_id, Outcome.TRANSIENT, http, detail))
            else:
                results.append(SendResult(inst.delivery_id, by_status, http, status_detail))
        return results

    def _http_outcome(self, code: int) -> Outcome:
        if code in self._permanent_statuses:
            return Outcome.PERMANENT
        if code in self._transient_statuses:
            return Outcome.TRANSIENT
        if code >= 500 or code in (408, 429):
            return Outcome.TRANSIENT
        return Outcome.PERMANENT


def _culprit_result(error: PartSourceError) -> SendResult:
    outcome = Outcome.PERMANENT if error.permanent else Outcome.TRANSIENT
    return SendResult(error.delivery_id, outcome, "spool", str(error))


def _failed_result(inst: OutgoingInstance, http: str, reason: int | None) -> SendResult:
    outcome = failure_outcome(reason)
    if reason is None:
        return SendResult(inst.delivery_id, outcome, http, "failed without a FailureReason")
    status = f"{http} 0x{reason:04X}"
    if outcome is Outcome.DELIVERED:
        detail = f"destination already holds this instance (0x{reason:04X})"
        return SendResult(inst.delivery_id, outcome, status, detail, warning=True)
    detail = f"failed with 0x{reason:04X} ({reason_text(reason)})"
    return SendResult(inst.delivery_id, outcome, status, detail)


def _excerpt(body: bytes) -> str:
    text = " ".join(body[: _EXCERPT_CHARS * 4].decode("utf-8", "replace").split())
    return text[:_EXCERPT_CHARS] if text else "(empty body)"


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    buffer = bytearray()
    for chunk in response.iter_bytes():
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


def _ssl_verify(name: str, verify: bool | str) -> bool | ssl.SSLContext:
    """httpx 0.28 deprecates ``verify=<path>``: turn a CA file or directory into a context."""
    if isinstance(verify, bool):
        return verify
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"destination {name!r}: verify={verify!r} is not a readable CA file or directory: {exc}"
        ) from exc
