// relaytv web view: the live edge of the page's player, the same rule as player/live.py's LiveEdge.
// Pure (the clock is passed in): the numbers come from the client's /api/status `live_edge`,
// which the client takes from the VLC player's own LiveEdge, so both follow one rule.
"use strict";

class LiveEdge {
  // rule: /api/status live_edge (max_behind_s, max_rate, slew_per_s, rate_step,
  // speed_up_from_s, full_speed_at_s, skip_behind_s, resume_behind_s, ...)
  constructor(rule) {
    this.rule = rule;
    this.rate = 1.0;
    this.exact = 1.0;
    this.last = null;
  }

  // The rate that distance to live calls for, before smoothing: 1.0 up to speed_up_from_s,
  // rising linearly to max_rate at full_speed_at_s.
  wanted(behind) {
    const low = this.rule.speed_up_from_s, high = this.rule.full_speed_at_s;
    const share = Math.min(1, Math.max(0, (behind - low) / (high - low)));
    return 1.0 + share * (this.rule.max_rate - 1.0);
  }

  // Move the rate towards what `behind` calls for, by at most slew_per_s per second
  // and one rate_step per update (a late update does not jump), in steps of
  // rate_step; the rate to play at now (`now` in seconds).
  update(behind, now) {
    const elapsed = this.last === null ? 0 : Math.max(0, now - this.last);
    this.last = now;
    const step = Math.min(this.rule.slew_per_s * elapsed, this.rule.rate_step);
    this.exact += Math.max(-step, Math.min(step, this.wanted(behind) - this.exact));
    const q = this.rule.rate_step;
    const quantized = Math.round(Math.round(this.exact / q) * q * 100) / 100;
    this.rate = Math.min(this.rule.max_rate, Math.max(1.0, quantized));
    return this.rate;
  }

  // So far behind that catching up by speed would take too long: skip ahead.
  hopeless(behind) {
    return behind > this.rule.skip_behind_s;
  }
}

if (typeof module !== "undefined") module.exports = { LiveEdge };
