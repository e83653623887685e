"""One progress line for a long job: what is done of the total, the rate, the time left.

    with Progress("[map] chips", total=27, unit="chips") as progress:
        for ...:
            progress.update(done, note="0 failed")

On a terminal (a TTY) the line is redrawn in place with a bar; anywhere else (a log file, CI, a
pipe) it is a new line. Either way it shows at least every :attr:`Progress.every_s` seconds, even
while nothing finishes (the elapsed time and the rate move on), and once more when the block ends.
Work the driver does not see finish is polled (:attr:`Progress.poll`): the chip files a mapping
run's actors have written, or the step a Ray Train worker's rank 0 wrote with :func:`write_progress`
(read by :func:`read_progress`). Every job's progress goes through this class, so they all read alike::

    [map] chips 14/27 52% | 0.41 chips/s | 0:34 elapsed, ETA 0:32 | 0 resumed before, 0 failed, 870 patches
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from magseg_ray.files import write_atomic


def clock(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour) of a duration."""
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


@dataclass
class Progress:
    """A job's progress line (see module doc); a context manager."""

    label: str
    """What is counted, as the line starts: ``"[map] chips"``, ``"[sft] steps"``."""
    total: int
    """How many there are to do in this run."""
    unit: str = "items"
    """Unit of the rate (``chips`` -> ``chips/s``)."""
    every_s: float = 10.0
    """Longest time between two lines (not on a TTY: also the shortest, so a log gets one line per period)."""
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    """Where the line goes (stderr: a job's stdout is its result)."""
    tty: bool | None = None
    """Redraw in place with a bar; ``None``: when :attr:`stream` is a terminal."""
    poll: Callable[[], tuple[int, str] | None] | None = None
    """What is done now and a note (``None``: not known yet), asked every second on a terminal, else
    every :attr:`every_s`; a count lower than the line's is ignored."""
    done: int = 0
    note: str = ""

    def __post_init__(self):
        self.tty = self.stream.isatty() if self.tty is None else self.tty
        self._start = time.monotonic()
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self) -> Progress:
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.join()
        self._ask()
        self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def update(self, done: int, note: str = "") -> None:
        """``done`` of :attr:`total` finished (never less than the line shows); ``note``: what else the
        line says (failures, loss)."""
        self.done, self.note = max(done, self.done), note or self.note
        if time.monotonic() - self._last >= (0.5 if self.tty else self.every_s) or done >= self.total:
            self._show()

    def line(self) -> str:
        """The progress line as it reads now."""
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = self.done / self.total if self.total else 1.0
        eta = f"ETA {clock((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else (
            "done" if self.done >= self.total else "ETA -")
        bar = f" [{'#' * int(share * 24):<24}]" if self.tty else ""
        parts = [f"{self.label}{bar} {self.done}/{self.total} {share:.0%}", f"{rate:.2f} {self.unit}/s",
                 f"{clock(elapsed)} elapsed, {eta}"]
        return " | ".join(parts + ([self.note] if self.note else []))

    def _show(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            self.stream.write(f"\r{self.line()}\033[K" if self.tty else f"{self.line()}\n")
            self.stream.flush()

    def _heartbeat(self) -> None:
        asked = time.monotonic()
        while not self._stop.wait(1.0):
            if time.monotonic() - asked >= (1.0 if self.tty else self.every_s - 1.5):
                asked = time.monotonic()
                self._ask()
            if time.monotonic() - self._last >= (0.5 if self.tty else self.every_s):
                self._show()

    def _ask(self) -> None:
        """Take :attr:`poll`'s count when it is ahead of the line's."""
        try:
            seen = self.poll() if self.poll is not None else None
        except Exception:  # noqa: BLE001  (a poll that fails, e.g. a store not answering, is skipped)
            seen = None
        if seen is not None and seen[0] > self.done:
            self.done, self.note = seen[0], seen[1] or self.note


def write_progress(path: Path, done: int, note: str = "") -> None:
    """What a worker has done, for the driver's :func:`read_progress` (the file replaced whole)."""
    write_atomic(path, json.dumps({"done": done, "note": note}))


def read_progress(path: Path) -> tuple[int, str] | None:
    """What :func:`write_progress` last wrote at ``path`` (``None``: nothing yet); a :attr:`Progress.poll`."""
    try:
        seen = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return seen["done"], seen["note"]
