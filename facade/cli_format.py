"""Presentation helpers of the command-line tool: aligned tables, values, progress bars."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence, TextIO


def fmt_time(t: datetime | None) -> str:
    """A UTC timestamp with full microsecond precision (pasteable into ``--time``)."""
    if t is None:
        return "-"
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_bytes(n: int) -> str:
    """A byte count for people: exact below 1 KiB, else one decimal and a binary unit."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def fmt_value(v: Any) -> str:
    """A label value in the same syntax ``--label k=v`` accepts.

    Strings are shown bare unless they would read back as JSON (``"1"``, ``"true"``),
    in which case they are quoted so that the display stays unambiguous.
    """
    if isinstance(v, str):
        try:
            json.loads(v)
        except ValueError:
            return v if v and not v.isspace() else json.dumps(v)
        return json.dumps(v)
    return json.dumps(v, separators=(",", ":"))


def fmt_pairs(d: dict[str, Any]) -> str:
    """``k=v`` pairs sorted by key, space separated (``-`` when empty)."""
    if not d:
        return "-"
    return " ".join(f"{k}={fmt_value(d[k])}" for k in sorted(d))


def shorten(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, ending in ``...`` when cut."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


LABEL_VALUE_WIDTH = 24
LABELS_WIDTH = 60


def fmt_pairs_short(d: dict[str, Any]) -> str:
    """``fmt_pairs`` for table cells: each value, and then the whole cell, shortened (``...``)."""
    if not d:
        return "-"
    cell = " ".join(f"{shorten(k, LABEL_VALUE_WIDTH)}={shorten(fmt_value(d[k]), LABEL_VALUE_WIDTH)}" for k in sorted(d))
    return shorten(cell, LABELS_WIDTH)


def left_out(shown: int, total: int, what: str) -> str:
    """The line under a cut table: how many rows were left out and how to see them."""
    return f"... {total - shown} more {what} not shown (of {total}; --limit N or --all to show more)"


def fmt_metrics(d: dict[str, float | int]) -> str:
    """Metrics as ``name=value`` pairs with compact numbers."""
    if not d:
        return "-"
    return " ".join(f"{k}={d[k]:g}" if isinstance(d[k], float) else f"{k}={d[k]}" for k in sorted(d))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Sequence[str] = ()) -> str:
    """Render rows under headers as space-aligned columns; ``right`` names right-aligned columns.

    The last column is never padded so that long label lists do not drag trailing blanks.
    """
    cells = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    right_idx = {i for i, h in enumerate(headers) if h in right}

    def line(values: Sequence[str]) -> str:
        parts = []
        last = len(values) - 1
        for i, v in enumerate(values):
            if i in right_idx:
                parts.append(v.rjust(widths[i]))
            elif i == last:
                parts.append(v)
            else:
                parts.append(v.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``name: value`` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {v}" for k, v in pairs)


class Progress:
    """A hand-drawn progress bar on a terminal; silent when the stream is not a TTY.

    ``update`` may be called from worker threads and as often as wanted: the bar
    is redrawn at most ten times a second, and ``close`` erases it.
    """

    WIDTH = 30

    def __init__(self, label: str, *, unit: str = "bytes", stream: TextIO | None = None):
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self._last = 0.0
        self._drawn = False

    def _amount(self, n: int) -> str:
        return fmt_bytes(n) if self.unit == "bytes" else f"{n} {self.unit}"

    def update(self, done: int, total: int) -> None:
        """Redraw the bar for ``done`` of ``total`` (throttled)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self._drawn and now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% {self._amount(done)}/{self._amount(total)}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar so that later messages start on a clean line."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
