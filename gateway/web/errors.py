"""HTTP problems: how DICOMweb handlers say "no" without leaking tracebacks.

Handlers raise `WebProblem(status, detail)`; `problem_handler` turns it (and any gateway error
that escaped) into a small JSON body `{"error": ..., "detail": ...}`, the same shape the auth
guard answers with, so clients parse one error format. Unexpected exceptions are logged with
their traceback and answered 500 with no internals.
"""

from __future__ import annotations

import functools
import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.exceptions import GatewayError, InvalidInputError, SpoolError, StoreError
from gateway.web.guard import Handler

log = logging.getLogger(__name__)


class WebProblem(GatewayError):
    """A request we answer with an HTTP error status and a one-line reason."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def warning_value(text: str) -> str:
    """A `Warning: 299` value (RFC 7234 §5.5); the text is made header-safe (printable ASCII)."""
    safe = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)[:300]
    return f'299 dicom-gateway "{safe}"'


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON error response for `status`."""
    phrase = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": phrase, "detail": detail}, status_code=status, headers=headers)


def problem_handler(handler: Handler) -> Handler:
    """Wrap a handler so every failure becomes a precise HTTP problem."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except WebProblem as exc:
            return problem(exc.status, exc.detail, exc.headers)
        except InvalidInputError as exc:
            return problem(400, str(exc))
        except (SpoolError, StoreError) as exc:
            log.error("%s %s: storage unavailable: %s", request.method, request.url.path, exc)
            return problem(503, f"gateway storage unavailable: {exc}", {"Retry-After": "30"})

    return wrapped


async def http_exception_problem(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))


EXCEPTION_HANDLERS = {404: http_exception_problem, 405: http_exception_problem}
