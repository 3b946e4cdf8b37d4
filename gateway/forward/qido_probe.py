"""The idle probe of a `dicomweb` destination: one QIDO-RS request (PS3.18 10.6).

``GET {url}/studies?limit=1`` with ``Accept: application/dicom+json`` and the destination's
outbound auth, through the STOW-RS sender's own client (same TLS verification, timeout, no
redirects followed). Only the status line is read: the body (a study's attributes, patient
data) is closed unread. Any answer proves the server is up; what the breaker becomes depends
on whether a STOW-RS request would fare the same:

==========================================  ==========  =====================================
Answer                                      state       why
==========================================  ==========  =====================================
2xx                                         up          it answers and accepts our credentials
401 (again after refreshing credentials)    down        ``credentials refused``: every STOW-RS
                                                        request would be refused (and dead-
                                                        lettered as a 4xx); renew them
5xx, 408, 429, a status listed in           down        busy or failing: deliveries would be
``transient_http_statuses``                             retried, so keep waiting
other 3xx/4xx (403, 404, 405...)            degraded    it answers, but many servers serve
                                                        STOW-RS and not QIDO-RS, or let this
                                                        account store but not search: the
                                                        next delivery decides
refused, reset, timed out                   down        not reachable
==========================================  ==========  =====================================
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from gateway.exceptions import GatewayError
from gateway.forward.base import ProbeResult

PROBE = "QIDO-RS"


def search_one_study(
    client: httpx.Client,
    url: str,
    *,
    timeout: float,
    auth: Callable[[], dict[str, str]] | None,
    on_unauthorized: Callable[[], None] | None,
    transient: Callable[[int], bool],
) -> ProbeResult:
    """Probe `url` (the destination's base URL); `transient(code)` as the STOW-RS sender says."""
    target = f"{url}/studies?limit=1"
    answer = _get(client, target, timeout, auth)
    if answer == 401 and on_unauthorized is not None:
        try:
            on_unauthorized()
        except GatewayError as exc:
            detail = f"{target} answered HTTP 401 and refreshing credentials failed: {exc}"
            return ProbeResult("down", PROBE, "credentials refused", detail)
        answer = _get(client, target, timeout, auth)
    if isinstance(answer, ProbeResult):
        return answer
    status = f"HTTP {answer}"
    if 200 <= answer < 300:
        return ProbeResult("up", PROBE, status, f"{target} answered {status}")
    if answer == 401:
        return ProbeResult(
            "down",
            PROBE,
            "credentials refused",
            f"{target} answered HTTP 401: the server is up but refuses the gateway's "
            "credentials; renew them (destinations.NAME.auth) before deliveries resume",
        )
    if transient(answer):
        return ProbeResult("down", PROBE, status, f"{target} answered {status}: busy or failing")
    return ProbeResult(
        "degraded",
        PROBE,
        status,
        f"{target} answered {status}: the server is up; whether it stores is known once "
        "work for it arrives",
    )


def _get(
    client: httpx.Client,
    target: str,
    timeout: float,
    auth: Callable[[], dict[str, str]] | None,
) -> int | ProbeResult:
    """The status code of one GET, or the ProbeResult of no answer. Where httpx errors end."""
    try:
        headers = {"Accept": "application/dicom+json"}
        if auth is not None:
            headers.update(auth())
        request = client.build_request("GET", target, headers=headers, timeout=timeout)
        response = client.send(request, stream=True)
        response.close()  # unread: the body is a study's attributes
        return response.status_code
    except httpx.TimeoutException as exc:
        return ProbeResult("down", PROBE, "timeout", f"{target}: {type(exc).__name__}: {exc}")
    except httpx.ConnectError as exc:
        status = "connection refused" if "refused" in str(exc).lower() else "connect failed"
        return ProbeResult("down", PROBE, status, f"cannot connect to {target}: {exc}")
    except httpx.HTTPError as exc:
        return ProbeResult(
            "down", PROBE, "connection error", f"{target}: {type(exc).__name__}: {exc}"
        )
    except GatewayError as exc:  # from the auth() callback
        return ProbeResult("down", PROBE, "no credentials", f"cannot obtain credentials: {exc}")
