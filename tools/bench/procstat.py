"""CPU time and resident memory of process trees, read from ``/proc`` (Linux; no psutil).

Every process of the stack is started as the leader of its own session
(``start_new_session``), so "the process and whatever it forked" is "every process whose
session id is the leader's pid". CPU time counts each live member's user + system time and
the time of the children each has already reaped (``cutime`` + ``cstime``).
"""

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name, which may hold spaces)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None  # gone, or not ours to read
    return raw[raw.rindex(")") + 2 :].split()


# Indices into _stat() (field number - 3; see proc(5)).
_PARENT, _SESSION, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 3, 11, 12, 13, 14


def session_members(leader: int) -> list[int]:
    """Pids of the live processes in ``leader``'s session, and its children in sessions of
    their own (a PostgreSQL server's backends), the leader first."""
    members = [leader]
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        fields = _stat(int(entry.name))
        if fields is not None and leader in (int(fields[_SESSION]), int(fields[_PARENT])):
            members.append(int(entry.name))
    return members


def cpu_seconds(leader: int) -> float:
    """User + system CPU seconds of ``leader``'s session so far (live and reaped members)."""
    ticks = 0
    for pid in session_members(leader):
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (_UTIME, _STIME, _CUTIME, _CSTIME))
    return ticks / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Sum of ``VmRSS`` of ``pids`` (0 for any that is gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def own_cpu_seconds() -> float:
    """CPU seconds of this (the driver's) process: its share of the machine is not free."""
    times = os.times()
    return times.user + times.system


@dataclass
class Usage:
    """What one measured interval cost: CPU seconds and peak RSS (MB) per named process."""

    seconds: float
    cpu_s: dict[str, float]
    rss_max_mb: dict[str, float]


@dataclass
class ResourceMonitor:
    """Samples the RSS of named session leaders every ``interval`` seconds, in the background.

    ``measure()`` brackets an interval: CPU seconds consumed in it and the highest RSS seen
    while it ran, per name; ``run_max_mb`` is the highest RSS over the monitor's whole life.
    Session membership is re-read at the start of each interval (the stack does not fork in
    between; re-scanning ``/proc`` twice a second would cost CPU the stack should have).
    """

    leaders: Mapping[str, int]
    interval: float = 0.5
    run_max_mb: dict[str, float] = field(default_factory=dict)
    _members: dict[str, list[int]] = field(default_factory=dict)
    _interval_max: dict[str, float] | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresh_members()
        self._task = asyncio.create_task(self._sample_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def current_mb(self, name: str) -> float:
        """RSS of ``name`` right now."""
        return rss_bytes(self._members.get(name, [self.leaders[name]])) / MB

    @contextlib.contextmanager
    def measure(self) -> Iterator[Usage]:
        """``with monitor.measure() as usage:`` fills ``usage`` when the block ends."""
        self._refresh_members()
        usage = Usage(seconds=0.0, cpu_s={}, rss_max_mb={})
        cpu_before = self._cpu()
        started = time.perf_counter()
        self._interval_max = {}
        self._sample()
        try:
            yield usage
        finally:
            self._sample()
            usage.seconds = time.perf_counter() - started
            cpu_after = self._cpu()
            usage.cpu_s = {
                name: round(cpu_after[name] - cpu_before[name], 3) for name in cpu_before
            }
            usage.rss_max_mb = dict(self._interval_max)
            self._interval_max = None

    def _refresh_members(self) -> None:
        self._members = {name: session_members(pid) for name, pid in self.leaders.items()}

    def _cpu(self) -> dict[str, float]:
        cpu = {name: cpu_seconds(pid) for name, pid in self.leaders.items()}
        cpu["bench"] = own_cpu_seconds()
        return cpu

    def _sample(self) -> None:
        for name, pids in self._members.items():
            mb = rss_bytes(pids) / MB
            self.run_max_mb[name] = max(self.run_max_mb.get(name, 0.0), mb)
            if self._interval_max is not None:
                self._interval_max[name] = max(self._interval_max.get(name, 0.0), mb)

    async def _sample_forever(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval)
