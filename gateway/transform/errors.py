"""The one error a transform raises: this instance cannot be sent to this destination as is.

The message starts with the step that failed ("de-identification failed: ...") and says what
an operator can do; the transforming sender settles the delivery PERMANENT with it, so the
instance is dead-lettered, visible in `trace`, and can be retried once the cause is fixed.
"""

from __future__ import annotations

from gateway.exceptions import GatewayError


class TransformError(GatewayError):
    """An instance cannot be transformed as configured (retrying the same bytes will not help)."""
