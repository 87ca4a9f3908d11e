import random

from resilience.backoff import backoff


def test_the_ceiling_doubles_from_base_up_to_the_cap():
    assert [backoff(a, base=0.5, jitter="none") for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(20, base=0.5, cap=30.0, jitter="none") == 30.0
    assert backoff(10_000, base=0.5, cap=30.0, jitter="none") == 30.0  # no overflow for absurd attempt counts
    assert backoff(0, base=0.5, jitter="none") == 0.5  # attempt numbers start at 1


def test_full_jitter_draws_below_the_ceiling_and_equal_jitter_from_its_upper_half():
    rng = random.Random(3)
    full = [backoff(5, base=1.0, cap=100.0, rng=rng) for _ in range(2000)]
    equal = [backoff(5, base=1.0, cap=100.0, jitter="equal", rng=rng) for _ in range(2000)]
    assert 0.0 <= min(full) < 1.0 and 15.0 < max(full) <= 16.0
    assert 8.0 <= min(equal) < 8.5 and 15.5 < max(equal) <= 16.0
