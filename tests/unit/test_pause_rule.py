"""The automatic-pause rule: thresholds are strict, the sample must be large enough, a resume starts afresh."""

from __future__ import annotations

import pytest

from config.settings import Settings
from streams.pause_rule import DeliveryCounts, should_pause

LIMITS = dict(bounce_threshold=0.02, complaint_threshold=0.001, min_sample=500)


def test_no_pause_before_the_minimum_sample_however_bad_the_rate():
    assert should_pause(DeliveryCounts(7, sent=499, bounced=400), **LIMITS) is None


@pytest.mark.parametrize(("bounced", "paused"), [(10, False), (11, True)])
def test_the_bounce_threshold_is_passed_only_when_exceeded(bounced, paused):
    decision = should_pause(DeliveryCounts(7, sent=500, bounced=bounced), **LIMITS)
    assert (decision is not None) is paused
    if decision:
        assert decision.reason == "bounce rate 2.2% (11 of 500) above 2.0%"
        assert (decision.sent, decision.bounced, decision.bounce_rate) == (500, 11, pytest.approx(0.022))


def test_complaints_pause_on_their_own_threshold_and_both_reasons_are_given():
    one = should_pause(DeliveryCounts(7, sent=1000, complained=2), **LIMITS)
    assert one is not None and one.reason == "complaint rate 0.20% (2 of 1000) above 0.10%"
    both = should_pause(DeliveryCounts(7, sent=1000, bounced=30, complained=2), **LIMITS)
    assert both is not None and both.reason.startswith("bounce rate 3.0%") and "; complaint rate" in both.reason
    assert should_pause(DeliveryCounts(7, sent=1000, complained=1), **LIMITS) is None


def test_after_a_pause_only_what_was_sent_since_counts():
    rebased = DeliveryCounts(7, sent=500, bounced=50).rebased()
    assert should_pause(rebased, **LIMITS) is None  # nothing sent since: no new sample
    later = DeliveryCounts(7, sent=1000, bounced=55, base_sent=500, base_bounced=50)
    assert should_pause(later, **LIMITS) is None  # 5 of 500 since the resume: 1 %
    worse = DeliveryCounts(7, sent=1000, bounced=70, base_sent=500, base_bounced=50)
    assert should_pause(worse, **LIMITS) is not None  # 20 of 500: 4 %


def test_counts_round_trip_and_refuse_unknown_fields():
    counts = DeliveryCounts(7, 10, 1, 0, 0, 0, 0)
    assert DeliveryCounts.from_dict(counts.to_dict()) == counts
    with pytest.raises(TypeError):
        DeliveryCounts.from_dict({**counts.to_dict(), "bounced_typo": 1})


def test_company_thresholds_override_the_defaults_field_by_field():
    settings = Settings(company_pause_thresholds={"7": {"bounce_rate": 0.05}})
    assert settings.pause_thresholds_for(7) == (0.05, 0.001)
    assert settings.pause_thresholds_for(8) == (0.02, 0.001)
    assert settings.pause_thresholds_for(None) == (0.02, 0.001)
