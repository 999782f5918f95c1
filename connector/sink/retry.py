"""Backoff policy for retryable Yespo calls: a pure function of the attempt number.

Exponential backoff with full jitter (AWS style), capped, and never shorter than a server's
`Retry-After` (which the cap does not shorten; the retry budget does). The randomness is injected, so
tests and the deliver loop decide where it comes from.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RetryPolicy", "UniformSource", "backoff_delay", "parse_retry_after"]

logger = logging.getLogger(__name__)


class UniformSource(Protocol):
    """What the policy needs from a random generator (`random.Random` satisfies it)."""

    def uniform(self, a: float, b: float) -> float:
        """A float in [a, b]."""
        ...


def backoff_delay(
    attempt: int,
    retry_after: float | None,
    rng: UniformSource,
    *,
    base: float = 0.5,
    cap: float = 60.0,
) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    The exponential bound is `min(cap, base * 2**(attempt - 1))`; the delay is drawn uniformly from
    `[0, bound]` ("full jitter"), so many workers that failed together do not retry together. A
    server-sent `retry_after` is a floor: the result is `max(jittered, retry_after)`. `cap` bounds the
    computed backoff only: a server that asks for a longer wait gets it (`RetryPolicy` bounds the
    total by its retry budget).

    Raises:
        ValueError: `attempt` is below 1 or `base`/`cap` are not positive.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    # 2**1100 overflows a float; the cap is reached long before that.
    bound = cap if attempt > 64 else min(cap, base * math.pow(2, attempt - 1))
    delay = min(rng.uniform(0.0, bound), cap)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """A `Retry-After` header as seconds from `now`: delta-seconds or an HTTP-date; None if absent/bad.

    Negative or unparsable values give None (the caller falls back to its own backoff).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        current = now if now is not None else dt.datetime.now(dt.UTC)
        seconds = (when - current).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return None
    return seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry a retryable delivery failure and when to give up (then the caller DLQs).

    Attributes:
        base: first backoff bound in seconds.
        cap: largest computed backoff in seconds; a server's longer `Retry-After` (or a `must_wait`)
            is waited for in full.
        max_retry_seconds: total time since the first failure after which the caller gives up. No
            wait passes it but a `must_wait`: a `Retry-After` beyond it is cut to the budget left,
            and the retry at its end, if it fails too, gives up (`next_delay` returns None).
    """

    base: float = 0.5
    cap: float = 60.0
    max_retry_seconds: float = 3600.0

    def next_delay(
        self,
        attempt: int,
        elapsed: float,
        retry_after: float | None,
        rng: UniformSource,
        *,
        must_wait: float | None = None,
    ) -> float | None:
        """The wait before retry `attempt`, or None when the retry budget is spent.

        Args:
            attempt: 1 for the first retry, 2 for the second, ...
            elapsed: seconds since the first failed attempt of this work item.
            retry_after: the server's `Retry-After` in seconds, if it sent one.
            rng: the jitter source.
            must_wait: a wait before which the retry cannot succeed (Yespo's one-minute repeat
                window after a 409): neither `cap` nor `max_retry_seconds` shortens it, so a retry
                budget below it still gets one retry past it.

        Returns:
            Seconds to wait, at least `retry_after` (above `cap` too); the last wait is shortened so
            the total never passes `max_retry_seconds` (unless `must_wait` says longer), also when
            the server asked for more: the retry then comes at the budget's end, and if it fails
            too the next call gives up. None means "give up now".
        """
        remaining = self.max_retry_seconds - elapsed
        if remaining <= 0:
            return None
        delay = backoff_delay(attempt, retry_after, rng, base=self.base, cap=self.cap)
        if must_wait is not None and must_wait > 0:
            return max(min(delay, remaining), must_wait)
        return min(delay, remaining)
