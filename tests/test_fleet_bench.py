"""The fleet section's arithmetic (benchmarks/fleet.py): pure functions, no database."""

from __future__ import annotations

import math

import pytest

from benchmarks.fleet import (
    fullest_window,
    max_overlap,
    middle_rate,
    over_bound_pct,
    per_key_rates,
    quantile,
    recovery,
)
from benchmarks.run import max_in_window


def spaced(rate: float, count: int, start: float = 0.0) -> list[float]:
    return [start + n / rate for n in range(count)]


def test_middle_rate_of_an_even_stream() -> None:
    assert middle_rate(spaced(50, 1_500)) == pytest.approx(50, rel=1e-3)


def test_middle_rate_ignores_a_burst_at_either_end() -> None:
    times = [0.0] * 100 + spaced(50, 1_000, start=0.02) + [20.02] * 100
    assert middle_rate(times) == pytest.approx(50, rel=0.01)


def test_middle_rate_of_too_few_starts_is_nan() -> None:
    assert math.isnan(middle_rate([1.0, 1.0]))


def test_the_100_ms_bound_holds_for_an_even_stream() -> None:
    assert max_in_window(spaced(50, 1_500), 0.1) <= 50 * 0.1 + 1
    assert max_in_window(spaced(2_000, 20_000), 0.1) <= 2_000 * 0.1 + 1


def test_max_overlap_counts_intervals_open_at_once() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (0.5, 1.5), (0.9, 2)]) == 3
    assert max_overlap([(0, 1), (2, 3)]) == 1


def test_intervals_that_touch_do_not_overlap() -> None:
    # One job of the key ends as the next starts: a limit of 1 was kept.
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1


def test_no_recovery_needed_when_the_rate_never_leaves_the_band() -> None:
    back, lowest = recovery(spaced(50, 1_500), since=10.0, rate=50)
    assert back == 0.0
    assert lowest == pytest.approx(50, abs=1)


def test_recovery_after_a_gap() -> None:
    # 50/s to 10 s, nothing until 10.5 s, 50/s again: the rolling 1-s window holds
    # 48 of 50 (within 5%) again once it reaches into the gap by 0.05 s at most: 11.45 s.
    times = spaced(50, 500) + spaced(50, 500, start=10.5)
    back, lowest = recovery(times, since=10.0, rate=50)
    assert back is not None
    assert back == pytest.approx(1.45, abs=0.02)
    assert lowest == pytest.approx(25, abs=1.5)


def test_no_recovery_when_the_run_ends_slow() -> None:
    times = spaced(50, 500) + spaced(25, 200, start=10.0)
    back, _ = recovery(times, since=10.0, rate=50)
    assert back is None


def test_per_key_rates() -> None:
    runs = [("a", t) for t in spaced(5, 100)] + [("b", t) for t in spaced(4, 100, start=0.1)]
    rates = per_key_rates(runs)
    assert rates["a"] == pytest.approx(5, rel=1e-3)
    assert rates["b"] == pytest.approx(4, rel=1e-3)


def test_quantile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) in {50.0, 51.0}
    assert quantile(values, 0.9) == pytest.approx(90, abs=1)


def test_nothing_to_say_when_the_run_ended_before_the_kill() -> None:
    back, lowest = recovery(spaced(50, 100), since=10.0, rate=50)
    assert back is None
    assert math.isnan(lowest)


def test_fullest_window_and_the_share_over_the_bound() -> None:
    times = [*spaced(50, 100), 2.001, 2.002, 2.003]  # a burst of 3 after the last start
    count, at = fullest_window(times, 0.1)
    assert count == max_in_window(times, 0.1) == 7
    assert at == pytest.approx(1.92)
    assert over_bound_pct(spaced(50, 100), 0.1, 6) == 0.0
    assert over_bound_pct(times, 0.1, 6) == pytest.approx(100 / 103)
