"""The live edge: how fast to play so that the screen stays near live (pure, clock injected).

A server does not always send content exactly as fast as it plays: blocks of
2.6 s sent every 2.0 s arrive 1.3 times faster than they play, and a player
at 1.0x falls behind forever. :class:`LiveEdge` turns the distance to live
(seconds of content waiting) into a play rate:

- up to half of ``max_behind``: 1.0x;
- from there to five eighths of ``max_behind`` the wanted rate rises
  linearly to ``max_rate`` (VLC keeps the pitch of the sound);
- the rate moves towards the wanted one by at most ``slew`` per second and
  by one step of :data:`RATE_STEP` at most per update, so that it never
  jumps, even after an update that came late;
- beyond ``skip_behind`` (three times ``max_behind`` unless given) catching
  up would take minutes: :meth:`LiveEdge.hopeless` says so, and the player
  skips ahead to :attr:`LiveEdge.resume_behind` (half of ``max_behind``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Rates are changed in steps of this size (VLC is told only when it changes).
RATE_STEP = 0.02


@dataclass
class LiveEdge:
    """Rate control towards live. ``update(behind, now)`` -> the rate to play at."""

    max_behind: float = 8.0
    max_rate: float = 1.4
    slew: float = 0.1
    skip_behind: float | None = None

    rate: float = field(default=1.0, init=False)
    _exact: float = field(default=1.0, init=False)
    _last: float | None = field(default=None, init=False)

    def __post_init__(self):
        if self.max_behind <= 0:
            raise ValueError(f"max_behind must be positive, not {self.max_behind}")
        if not 1.0 <= self.max_rate <= 4.0:
            raise ValueError(f"max_rate must be between 1 and 4, not {self.max_rate}")
        if self.slew <= 0:
            raise ValueError("slew must be positive")
        if self.skip_behind is None:
            self.skip_behind = 3 * self.max_behind
        if self.skip_behind <= self.max_behind:
            raise ValueError("skip_behind must be larger than max_behind")

    @property
    def speed_up_from(self) -> float:
        """Below this distance to live the player plays at 1.0x."""
        return self.max_behind / 2

    @property
    def full_speed_at(self) -> float:
        """From this distance on the wanted rate is ``max_rate``."""
        return self.max_behind * 5 / 8

    @property
    def resume_behind(self) -> float:
        """How far behind live a skip ahead lands."""
        return self.speed_up_from

    def wanted(self, behind: float) -> float:
        """The rate that distance to live calls for, before smoothing."""
        low, high = self.speed_up_from, self.full_speed_at
        share = min(1.0, max(0.0, (behind - low) / (high - low)))
        return 1.0 + share * (self.max_rate - 1.0)

    def update(self, behind: float, now: float) -> float:
        """Move the rate towards what ``behind`` calls for; the rate VLC should play at now."""
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        target = self.wanted(behind)
        # One step at most per update: a loop that was held up (a busy machine)
        # catches up over the next updates instead of jumping.
        step = min(self.slew * elapsed, RATE_STEP)
        self._exact += max(-step, min(step, target - self._exact))
        quantized = round(round(self._exact / RATE_STEP) * RATE_STEP, 2)
        self.rate = min(self.max_rate, max(1.0, quantized))
        return self.rate

    def hopeless(self, behind: float) -> bool:
        """So far behind that catching up by speed would take too long: skip ahead."""
        return behind > self.skip_behind
