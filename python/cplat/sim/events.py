"""The simulator's event queue: a heap ordered by (time, kind, sequence).

At one instant, events come in :class:`Kind` order (finishes, grace ends, node repairs, node
failures, scheduling ticks); events of one kind at one instant come in the order they were
pushed. That order, and nothing else, decides ties, so a replay is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from enum import IntEnum

__all__ = ["NEVER", "EventQueue", "Kind"]

#: A time later than any event (the queue's next time when it is empty).
NEVER = 2**63 - 1


class Kind(IntEnum):
    """Event kinds, in processing order at equal times."""

    FINISH = 0  # a job's run segment ends (stale when the job's generation moved on)
    GRACE_END = 1  # an evicted job's grace period is over
    NODE_UP = 2  # a failed node is repaired
    NODE_DOWN = 3  # a node fails
    TICK = 4  # a moment to schedule at (periodic scheduling, a reservation's end)


class EventQueue:
    """Pending events; each carries an item (a job or a node) and the job's generation."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, int, int]] = []
        self._seq = 0
        self.popped = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time: int, kind: Kind, item: int = 0, generation: int = 0) -> None:
        """Add an event at ``time`` (ties after the events of its kind already there)."""
        heapq.heappush(self._heap, (time, int(kind), self._seq, item, generation))
        self._seq += 1

    def next_time(self) -> int:
        """Return the time of the earliest event, or :data:`NEVER`."""
        return self._heap[0][0] if self._heap else NEVER

    def due(self, now: int) -> Iterator[tuple[int, int, int]]:
        """Pop and yield ``(kind, item, generation)`` of every event at ``now``, in order.

        ``kind`` is the plain integer of its :class:`Kind` (compare with the members; making
        an enum of every event would cost the replay time). Events pushed at ``now`` while this
        runs are yielded too, in their place.
        """
        heap = self._heap
        while heap and heap[0][0] == now:
            _, kind, _, item, generation = heapq.heappop(heap)
            self.popped += 1
            yield kind, item, generation
