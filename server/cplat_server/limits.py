"""Limits an operator sets: per-user caps on long-lived reads, a submission rate per token.

Event streams and log follows each hold a connection (and, for streams, a queue every state
change is copied into) for as long as the caller likes, so one user's script could slow the
service for everyone; each user may hold ``max_streams_per_user`` of them at once. Submissions
are durable writes: each token may sustain ``submit_rate`` per second with bursts of
``submit_burst`` (a token bucket). Over a limit the answer is 429 with ``Retry-After``, and
``cplat_limit_rejections_total`` counts it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator

from aiohttp import web

from cplat_server.errors import ApiError
from cplat_server.metrics import Metrics

#: Suggested wait before opening another stream: streams end when their readers leave, which
#: nobody can predict, so this is a polite pause rather than a promise.
STREAM_RETRY_AFTER = 5
#: Buckets kept before full (idle) ones are dropped, so a stream of fresh tokens cannot grow
#: the table without end.
MAX_BUCKETS = 4096


class TooManyRequestsError(ApiError):
    """A 429 whose answer carries ``Retry-After`` (whole seconds, at least 1)."""

    def __init__(self, code: str, message: str, retry_after: float) -> None:
        super().__init__(429, code, message)
        self.retry_after = max(1, math.ceil(retry_after))

    def response(self) -> web.Response:
        """Return the JSON answer, ``retry_after`` in the body and the header."""
        body = {
            "error": {
                "code": self.code,
                "message": self.message,
                "field": None,
                "retry_after": self.retry_after,
            }
        }
        return web.Response(
            status=429,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Retry-After": str(self.retry_after)},
        )


class Limits:
    """The service's stream slots and submission buckets (one per app, event-loop only).

    Parameters
    ----------
    metrics
        Where rejections and open streams are counted.
    max_streams_per_user
        Event streams and log follows one user may hold at once; 0 for no cap.
    submit_rate, submit_burst
        Sustained submissions per second per token and the bucket size; rate 0 for no limit.
    clock
        Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        metrics: Metrics,
        max_streams_per_user: int,
        submit_rate: float,
        submit_burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.max_streams = max_streams_per_user
        self.rate = submit_rate
        self.burst = float(submit_burst)
        self._clock = clock
        self._open: dict[str, int] = {}
        #: token -> (tokens left, when counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def stream_slot(self, user: str, kind: str) -> Iterator[None]:
        """Hold one of ``user``'s stream slots for the ``with`` block.

        Parameters
        ----------
        user
            Who holds it (the token's user).
        kind
            ``stream`` or ``log_follow``, for the metrics.

        Raises
        ------
        TooManyRequestsError
            When the user already holds ``max_streams_per_user``.
        """
        held = self._open.get(user, 0)
        if self.max_streams and held >= self.max_streams:
            self.metrics.limit_rejections.labels(limit="streams").inc()
            raise TooManyRequestsError(
                "too_many_streams",
                f"user {user!r} already holds {held} event streams and log follows (the "
                f"limit is {self.max_streams}); close one first",
                STREAM_RETRY_AFTER,
            )
        self._open[user] = held + 1
        gauge = self.metrics.open_streams.labels(kind=kind)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
            left = self._open[user] - 1
            if left:
                self._open[user] = left
            else:
                del self._open[user]

    def admit_submission(self, token: str) -> None:
        """Take one submission from ``token``'s bucket.

        Raises
        ------
        TooManyRequestsError
            When the bucket is empty; ``retry_after`` is when it holds one again.
        """
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, then = self._buckets.get(token, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[token] = (tokens, now)
            self.metrics.limit_rejections.labels(limit="submit_rate").inc()
            raise TooManyRequestsError(
                "rate_limited",
                f"more than {self.burst:.0f} submissions at once or {self.rate:g}/s sustained "
                "with this token; wait and retry",
                (1.0 - tokens) / self.rate,
            )
        self._buckets[token] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket at all.
        full = [k for k, (n, t) in self._buckets.items() if n + (now - t) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]


LIMITS = web.AppKey("limits", Limits)
