"""Public URLs of DICOMweb resources, and the UIDs taken from request paths.

Why one place: RetrieveURL (STOW and QIDO answers) and BulkDataURI (metadata) must name the
URL a client can fetch, which behind a reverse proxy is not the one uvicorn sees, so every
URL is built from `http.base_url` when it is set and from the request otherwise. Path UIDs are
checked against the UID grammar before they reach a query or the spool.
"""

from __future__ import annotations

from starlette.requests import Request

from gateway.dicom.uids import is_valid_uid
from gateway.web.context import WebContext
from gateway.web.errors import WebProblem


def context_of(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def base_url(request: Request) -> str:
    """The service root (`https://host/prefix`) without a trailing slash."""
    configured = context_of(request).settings.http.base_url
    if configured:
        return configured
    return str(request.base_url).rstrip("/")


def path_uid(request: Request, name: str) -> str:
    """The UID path parameter `name`, or a 400 problem naming it."""
    value = str(request.path_params[name])
    if not is_valid_uid(value):
        raise WebProblem(400, f"{value[:80]!r} in the path is not a valid DICOM UID")
    return value


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"
