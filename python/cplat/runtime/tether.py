"""The tether: stops an agent's tasks when the agent dies, however it dies.

Tasks lead process groups of their own, so an agent that is SIGKILLed (or crashes) leaves
them running as orphans, and the server would requeue their jobs elsewhere: two copies at once.
The agent therefore starts one tether, ``python tether.py GRACE``, as a child in a session of
its own, and keeps the write end of the tether's stdin. It writes a line per task::

    + PGID      a task leading process group PGID started
    - PGID      it ended
    g SECONDS   the grace to give them from now on

The tether does nothing else until its stdin reaches end of file. The kernel closes the pipe
when the agent exits, cleanly or not, so end of file means the agent is gone; the tether then
sends SIGTERM to every group still registered, SIGKILL ``GRACE`` seconds later to those left,
and exits. An agent that stops cleanly has stopped its tasks itself, so its tether finds none.

The file runs on its own (``python -I -S``), importing only the standard library, so it starts
in a few milliseconds and needs nothing from the agent's environment. A group is signalled only
while its leader is the process that was registered (same start time) or gone; a group whose
leader died but whose other members live keeps its id, which the kernel does not hand out
again while the group exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("cplat.agent")

#: How often the tether looks whether the groups it signalled are gone.
_POLL = 0.05


def _start_time(pid: int) -> int | None:
    """Return the process's start time in clock ticks after boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_groups(groups: dict[int, int | None], grace: float) -> list[int]:
    """SIGTERM the still-registered groups, SIGKILL them after ``grace``; return those hit.

    Parameters
    ----------
    groups
        Process group id -> start time of its leader when it was registered (None: unknown).
    grace
        Seconds between SIGTERM and SIGKILL.
    """
    mine = []
    for pgid, started in groups.items():
        now = _start_time(pgid)
        if now is not None and started is not None and now != started:
            continue  # the id belongs to another process now
        if _alive(pgid):
            mine.append(pgid)
    for pgid in mine:
        _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(g) for g in mine):
        time.sleep(_POLL)
    for pgid in mine:
        if _alive(pgid):
            _signal(pgid, signal.SIGKILL)
    return mine


def main(argv: list[str]) -> int:
    """Run the tether: read registrations from stdin until end of file, then stop the rest."""
    grace = float(argv[1]) if len(argv) > 1 else 10.0
    groups: dict[int, int | None] = {}
    for raw in sys.stdin.buffer:
        op, _, arg = raw.decode("ascii", "replace").strip().partition(" ")
        try:
            if op == "g":
                grace = max(0.0, float(arg))
            elif op == "+" and int(arg) > 1:
                groups[int(arg)] = _start_time(int(arg))
            elif op == "-":
                groups.pop(int(arg), None)
        except ValueError:
            continue
    hit = stop_groups(groups, grace)
    if hit:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} cplat tether: the agent is gone; stopped task groups {hit}", flush=True)
    return 0


class Tether:
    """The agent's end of its tether (see the module docstring).

    Parameters
    ----------
    proc
        The running tether, its stdin a pipe.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, grace: float, log_path: Path) -> Tether | None:
        """Start a tether (None, with a warning, when it cannot be started).

        Parameters
        ----------
        grace
            Seconds its SIGTERM gives the tasks before SIGKILL.
        log_path
            Where it writes the one line it has to say.
        """
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", __file__, f"{grace:g}"],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=out,
                    # Its own session: a Ctrl-C or a signal to the agent's group must not end
                    # the tether before the agent has stopped its tasks.
                    start_new_session=True,
                    env={},
                    cwd="/",
                )
        except OSError as err:
            log.warning(
                "cannot start the tether (%s): tasks will outlive this agent if it is killed",
                err,
            )
            return None
        return cls(proc)

    def _send(self, line: str) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return
        try:
            stdin.write(line.encode("ascii"))
            stdin.flush()
        except OSError as err:  # the tether died: the tasks lose their safety net
            log.warning("the tether is gone (%s); tasks will outlive this agent if killed", err)
            stdin.close()

    def track(self, pgid: int) -> None:
        """Register a task's process group."""
        self._send(f"+ {pgid}\n")

    def untrack(self, pgid: int) -> None:
        """Forget a task's process group (the task ended)."""
        self._send(f"- {pgid}\n")

    def set_grace(self, grace: float) -> None:
        """Give the tasks ``grace`` seconds between SIGTERM and SIGKILL from now on."""
        self._send(f"g {grace:g}\n")

    def close(self, timeout: float = 5.0) -> None:
        """Let the tether go (it stops what is still registered) and reap it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the tether did not exit within %.1fs; leaving it", timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
