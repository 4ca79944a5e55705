"""The benchmark's options and figures for real links: spread upload caps, film presets, lag per hop."""

from __future__ import annotations

import argparse

import pytest

from bench import metrics, netns, overlay


def test_one_cap_is_every_client_s_and_a_list_is_spread_in_equal_parts_in_order():
    assert netns.parse_caps("16") == [16.0]
    caps = netns.parse_caps("2,8,20")
    assert [netns.cap_of(caps, i, 30) for i in range(30)] == [2.0] * 10 + [8.0] * 10 + [20.0] * 10
    # 20 clients in thirds: 7, 7, 6 (the first parts take the remainder).
    spread = [netns.cap_of(caps, i, 20) for i in range(20)]
    assert (spread.count(2.0), spread.count(8.0), spread.count(20.0)) == (7, 7, 6)
    assert spread == sorted(spread)
    assert netns.cap_of([0.0], 3, 10) is None                 # 0: no cap
    assert netns.cap_of(caps, 45, 30) == 20.0                 # beyond the count: the last


@pytest.mark.parametrize("bad", ["", "x", "2,,8", "-1", "4,-2"])
def test_bad_caps_are_refused_with_the_reason(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="MBIT"):
        overlay._caps(bad)


def test_the_caps_option_reaches_the_arguments_and_the_title():
    args = overlay.parse_args(["--upload-mbit", "2,8,20", "--film-size", "720p"])
    assert args.upload_mbit == [2.0, 8.0, 20.0]
    assert args.film_size == "1280x720"
    assert netns.describe_caps(args.upload_mbit) == "2/8/20 Mbit/s in equal parts"
    assert overlay.parse_args([]).upload_mbit == [8.0]


@pytest.mark.parametrize("text, size", [("720p", "1280x720"), ("small", "320x180"),
                                        ("640x360", "640x360")])
def test_a_film_size_is_a_preset_or_width_by_height(text, size):
    assert overlay._film_size(text) == size


@pytest.mark.parametrize("bad", ["hd", "1280", "x720", "0x10"])
def test_a_bad_film_size_names_the_presets(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="720p"):
        overlay._film_size(bad)


def test_lag_per_hop_is_the_median_step_between_consecutive_depths():
    by_depth = metrics.lag_by_depth([(1, 0.1), (1, 0.3), (2, 1.2), (3, 2.4), (3, 2.2),
                                     (4, 3.6), (None, 9.0)])
    # Medians 0.2, 1.2, 2.3, 3.6: steps 1.0, 1.1, 1.3.
    assert metrics.lag_per_hop(by_depth) == pytest.approx(1.1)
    # A depth without samples breaks the chain: no step across the gap.
    assert metrics.lag_per_hop(metrics.lag_by_depth([(1, 0.0), (3, 5.0), (4, 5.5)])) == \
        pytest.approx(0.5)
    assert metrics.lag_per_hop(metrics.lag_by_depth([(1, 0.2), (None, 3.0)])) is None
    assert metrics.lag_per_hop({}) is None

