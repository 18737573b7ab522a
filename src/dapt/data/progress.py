"""Progress of a long data pass, for people: rate, ETA and throughput counters on stderr.

On a terminal the line is rewritten in place (at most every `interval` seconds); in a log file (not a TTY) a
new line is printed every `log_interval` seconds, so a multi-hour run leaves a readable trace instead of one
enormous carriage-return line. Only the main process of a multi-process launch reports.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"


class Progress:
    """Counts `done` of `total` items plus any other counters (tokens, bytes), and reports their rates.

    `update(items, **counters)` adds to the counts; `close()` prints the final line. The first `skipped` items
    (work finished by an earlier, interrupted run) count towards the total done but not towards the rates.
    """

    def __init__(
        self,
        description: str,
        total: int,
        unit: str,
        *,
        stream: TextIO | None = None,
        interval: float = 0.5,
        log_interval: float = 30.0,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else log_interval
        self.quiet = os.environ.get("RANK", "0") != "0"
        self.done = 0
        self.skipped = 0
        self.counters: dict[str, float] = {}
        self.started = time.perf_counter()
        self.last_shown = self.started

    def skip(self, items: int) -> None:
        """Items finished by an earlier run: done, but not part of this run's rate."""
        self.done += items
        self.skipped += items

    def update(self, items: int, **counters: float) -> None:
        self.done += items
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0.0) + value
        now = time.perf_counter()
        if now - self.last_shown >= self.interval:
            self.last_shown = now
            self._show(final=False)

    def rates(self) -> dict[str, float]:
        """Per second since the start: the items of this run and every counter."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {
            f"{self.unit}_per_s": (self.done - self.skipped) / elapsed,
            **{f"{name}_per_s": value / elapsed for name, value in self.counters.items()},
        }

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rates = self.rates()
        rate = rates[f"{self.unit}_per_s"]
        if self.total:
            counted = f"{self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%})"
        else:  # a stream of unknown length
            counted = f"{self.done:,} {self.unit}"
        parts = [f"{self.description}: {counted}"]
        parts.append(f"{_count(rate)} {self.unit}/s")
        for name in self.counters:
            per_second = rates[f"{name}_per_s"]
            parts.append(f"{per_second / 1e6:.1f} MB/s" if name == "bytes" else f"{_count(per_second)} {name}/s")
        remaining = self.total - self.done
        if remaining > 0 and rate > 0:
            parts.append(f"ETA {_duration(remaining / rate)}")
        else:
            parts.append(f"in {_duration(elapsed)}")
        return ", ".join(parts)

    def _show(self, *, final: bool) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._show(final=True)


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory so far, in MB: this process, and the largest of its finished child processes."""
    import resource

    kilobytes = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # ru_maxrss: KB on Linux, bytes on macOS
    return {
        "main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kilobytes, 1),
        "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kilobytes, 1),
    }
