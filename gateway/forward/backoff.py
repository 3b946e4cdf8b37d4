"""When to try a failed delivery again: exponential backoff with full jitter (tenacity's).

The persisted retry time is computed with tenacity's `wait_random_exponential`, the same
strategy the in-process retries use, so the two layers behave alike.
"""

from __future__ import annotations

import tenacity

from gateway.config import RetryPolicy


def retry_delay(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
    wait = tenacity.wait_random_exponential(
        multiplier=policy.initial_backoff, max=policy.max_backoff
    )
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return max(policy.initial_backoff / 2, float(wait(state)))


def give_up_reason(policy: RetryPolicy, *, attempt: int, age_seconds: float) -> str | None:
    """Why a transient failure should now be dead-lettered, or None to retry."""
    if attempt >= policy.max_attempts:
        return f"gave up after {attempt} attempts (retry.max_attempts)"
    if age_seconds >= policy.max_age_hours * 3600:
        return f"gave up after {age_seconds / 3600:.1f} h (retry.max_age_hours)"
    return None
