"""storage.alert_window.WindowCounts against a brute-force count, with a controllable clock.

The oracle keeps every accepted (second, n) pair and sums the window ``(now - window, now]`` from
scratch on each question; the real structure prunes as it goes.  Random operations (adds at seconds
before, inside and after the window, clock steps of every size) run against both with the same
seed; a failure prints the seed (replay with SHARDLOG_TEST_SEED=N).
"""

from __future__ import annotations

import random

import pytest

from storage.alert_window import WindowCounts
from tests.helpers import seeds_to_run

START_S = 1_704_067_200  # 2024-01-01T00:00:00Z in seconds


class BruteForce:
    """Every accepted count, summed from scratch."""

    def __init__(self, window_s: int, future_s: int) -> None:
        self.window_s = window_s
        self.future_s = future_s
        self.kept: list[tuple[int, int]] = []

    def add(self, second: int, n: int, now_s: int) -> bool:
        if now_s - self.window_s < second <= now_s + self.future_s:
            self.kept.append((second, n))
            return True
        return False

    def total(self, now_s: int) -> int:
        return sum(n for second, n in self.kept if now_s - self.window_s < second <= now_s)

    def has_counts_after(self, now_s: int) -> bool:
        """What may still matter once the window sits at ``now_s``: seconds newer than its start."""
        return any(second > now_s - self.window_s for second, _ in self.kept)


@pytest.mark.parametrize("seed", seeds_to_run(list(range(40))))
def test_random_adds_and_totals_agree_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    window_s = rng.choice((1, 2, 5, 60, 300, 3_600))
    future_s = rng.choice((0, 1, 30, 300))
    real = WindowCounts(window_s, future_s)
    oracle = BruteForce(window_s, future_s)
    now_s = START_S + rng.randrange(1_000)
    for step in range(400):
        roll = rng.random()
        where = f"seed {seed}, step {step}, now {now_s}, window {window_s}, future {future_s}"
        if roll < 0.45:
            # anywhere from well before the window to beyond the future limit, boundaries included
            offset = rng.choice((-window_s, -window_s + 1, 0, future_s, future_s + 1,
                                 rng.randint(-2 * window_s - 2, future_s + 2)))
            second, n = now_s + offset, rng.randint(1, 50)
            assert real.add(second, n, now_s) == oracle.add(second, n, now_s), where
        elif roll < 0.55:
            # what one ingest ack brings: several seconds at once, repeats included
            pairs = [(now_s + rng.randint(-2 * window_s - 2, future_s + 2), rng.randint(1, 50))
                     for _ in range(rng.randint(0, 8))]
            expected = [oracle.add(second, n, now_s) for second, n in pairs]
            assert real.add_many(pairs, now_s) == any(expected), where
        elif roll < 0.85:
            assert real.total(now_s) == oracle.total(now_s), where
            # total() prunes: what is left is exactly what can still be in a window
            assert bool(real) == oracle.has_counts_after(now_s), where
        else:
            # the clock moves forward by nothing, a second, part of a window, or past several
            now_s += rng.choice((0, 1, rng.randint(1, window_s), rng.randint(window_s, 3 * window_s + 5)))
    assert real.total(now_s) == oracle.total(now_s), f"seed {seed}: final total"


def test_window_boundaries() -> None:
    window = WindowCounts(60, future_s=10)
    now_s = START_S
    assert not window.add(now_s - 60, 1, now_s)  # (now - window, now]: the left end is outside
    assert window.add(now_s - 59, 2, now_s)
    assert window.add(now_s, 3, now_s)
    assert window.add(now_s + 10, 4, now_s)  # the future limit itself is kept ...
    assert not window.add(now_s + 11, 5, now_s)  # ... one more second is not
    assert window.total(now_s) == 5  # the future second is not counted yet
    assert window.total(now_s + 10) == 3 + 4  # now - 59 left at now + 1, now left at now + 60
    assert window.total(now_s + 69) == 4
    assert window.total(now_s + 70) == 0
    assert not window


def test_counts_of_one_second_add_up() -> None:
    window = WindowCounts(5)
    for n in (1, 2, 3):
        assert window.add(START_S, n, START_S)
    assert window.total(START_S) == 6
    assert window.total(START_S + 4) == 6
    assert window.total(START_S + 5) == 0


@pytest.mark.parametrize("window_s", [0, -1])
def test_a_window_under_one_second_is_refused(window_s: int) -> None:
    with pytest.raises(ValueError, match="at least 1 s"):
        WindowCounts(window_s)
