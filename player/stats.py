"""Statistics of the gaps between one block's end and the next block's start."""

from __future__ import annotations

import statistics


class GapStats:
    """Count, median and maximum of a series of gaps, in seconds."""

    def __init__(self):
        self._gaps: list[float] = []

    def add(self, seconds: float) -> None:
        self._gaps.append(seconds)

    @property
    def count(self) -> int:
        return len(self._gaps)

    @property
    def median(self) -> float | None:
        return statistics.median(self._gaps) if self._gaps else None

    @property
    def max(self) -> float | None:
        return max(self._gaps) if self._gaps else None

    def summary(self) -> str:
        """``count=N median=X ms max=Y ms`` (or ``count=0``)."""
        if not self._gaps:
            return "count=0"
        return (f"count={self.count} median={self.median * 1000:.1f} ms "
                f"max={self.max * 1000:.1f} ms")


class GapMeter:
    """Pairs a block's end with the next block's start.

    ``ended(t)`` when a block finished normally, ``started(t)`` when VLC
    started the next one: the difference is a gap. ``cancel()`` when what
    follows is not a back-to-back transition (a wait for a late block, a
    skipped block): those are not counted as gaps.
    """

    def __init__(self):
        self.stats = GapStats()
        self._ended_at: float | None = None

    def ended(self, t: float) -> None:
        self._ended_at = t

    def cancel(self) -> None:
        self._ended_at = None

    def started(self, t: float) -> float | None:
        """Record and return the gap, or None when no end is pending."""
        if self._ended_at is None:
            return None
        gap = max(0.0, t - self._ended_at)
        self._ended_at = None
        self.stats.add(gap)
        return gap
