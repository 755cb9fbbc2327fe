"""The controller's clock: wall time in the service, virtual time in replays and tests.

Every time the controller records or compares (submissions, starts, deadlines, heartbeats,
leases) comes from one :class:`Clock`, never from :func:`time.time` directly, so the same
controller can replay a day of work in seconds: a driver sets a :class:`VirtualClock` to the
next event's time and runs one step (see :mod:`cplat.testing.sim_agents`).

What the clock does not drive: how long the service's own loop waits between cycles and how
long a long poll is held are real waits of the event loop, and the time a cycle or a store
write takes is measured with the performance counter.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "VirtualClock", "WallClock"]


class Clock(Protocol):
    """A source of the current time, in seconds since the epoch."""

    def now(self) -> float:
        """Return the current time."""
        ...


class WallClock:
    """The system's wall clock (:func:`time.time`)."""

    def now(self) -> float:
        """Return the wall time."""
        return time.time()

    def __repr__(self) -> str:
        return "WallClock()"


class VirtualClock:
    """A clock that moves only when told to (never backwards).

    Parameters
    ----------
    start
        The initial time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        """Return the current virtual time."""
        return self._now

    def set(self, when: float) -> None:
        """Move to ``when``.

        Raises
        ------
        ValueError
            When ``when`` lies before the current time: the controller's deadlines and
            leases assume that time only moves forward.
        """
        if when < self._now:
            raise ValueError(f"a virtual clock cannot go back (from {self._now} to {when})")
        self._now = float(when)

    def advance(self, seconds: float) -> None:
        """Move ``seconds`` (not negative) forward."""
        self.set(self._now + seconds)

    def __repr__(self) -> str:
        return f"VirtualClock({self._now!r})"
