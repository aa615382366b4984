"""An owner's sharing rules over a simulated day: time is a value here, never a sleep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.machine_sharing import (
    Sharing,
    availability,
    local_day,
    parse_sharing,
    split_by_local_day,
)

PARIS = ZoneInfo("Europe/Paris")
NIGHTS = [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "20:00", "end": "08:00"}]
LEAD = timedelta(minutes=10)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A time in Paris in the week of Monday 2026-11-30 (day 0 is that Monday)."""
    return datetime(2026, 11, 30, hour, minute, tzinfo=PARIS) + timedelta(days=day)


def test_weekday_nights_in_the_owners_time_zone() -> None:
    sharing = parse_sharing("Europe/Paris", NIGHTS, None, None)
    assert not availability(sharing, now=at(0, 19, 59), gpus=2, used_gpu_hours_today=0).available
    evening = availability(sharing, now=at(0, 20), gpus=2, used_gpu_hours_today=0, lead=LEAD)
    assert evening.available and evening.drain_by == at(1, 8)
    # the same instant seen from UTC is the same answer
    utc = at(0, 23).astimezone(UTC)
    assert availability(sharing, now=utc, gpus=2, used_gpu_hours_today=0).available
    # Friday's night ends Saturday 08:00; Saturday night is not shared
    assert availability(sharing, now=at(5, 7), gpus=2, used_gpu_hours_today=0).available
    assert not availability(sharing, now=at(5, 21), gpus=2, used_gpu_hours_today=0).available


def test_drained_before_the_slot_ends() -> None:
    sharing = parse_sharing("Europe/Paris", NIGHTS, None, None)
    before = availability(sharing, now=at(1, 7, 49), gpus=1, used_gpu_hours_today=0, lead=LEAD)
    assert before.available
    due = availability(sharing, now=at(1, 7, 51), gpus=1, used_gpu_hours_today=0, lead=LEAD)
    assert not due.available and due.reason.startswith("draining") and due.drain_by == at(1, 8)


def test_slots_that_touch_are_one_stretch() -> None:
    slots = [*NIGHTS, {"days": ["tue"], "start": "08:00", "end": "12:00"}]
    sharing = parse_sharing("Europe/Paris", slots, None, None)
    verdict = availability(sharing, now=at(0, 22), gpus=1, used_gpu_hours_today=0, lead=LEAD)
    assert verdict.drain_by == at(1, 12)


def test_quota_accounting_over_a_simulated_day() -> None:
    """An always-shared 4-GPU machine lending 2 GPUs and 10 GPU-hours a day: walking the day in
    5-minute steps and charging what it served, it stops taking work before the quota is spent,
    never exceeds it, and is available again after local midnight."""
    sharing = Sharing("Europe/Paris", (), quota_gpus=2, quota_gpu_hours_per_day=10)
    used: dict[str, float] = {}
    step = timedelta(minutes=5)
    now = at(2, 0)
    stopped_at = None
    while now < at(3, 0):
        day = local_day(now, PARIS)
        verdict = availability(
            sharing, now=now, gpus=4, used_gpu_hours_today=used.get(day, 0.0), lead=LEAD
        )
        assert verdict.gpus == 2
        if verdict.available:
            for d, seconds in split_by_local_day(now, now + step, PARIS):
                used[d] = used.get(d, 0.0) + seconds * verdict.gpus / 3600
        elif stopped_at is None:
            stopped_at = now
        now += step
    assert used[local_day(at(2, 0), PARIS)] <= 10
    assert used[local_day(at(2, 0), PARIS)] >= 10 - 2 * LEAD.total_seconds() / 3600 - 1
    assert stopped_at is not None and at(2, 4) <= stopped_at < at(2, 5)  # 10 h at 2 GPUs
    fresh = availability(
        sharing, now=at(3, 0, 1), gpus=4, used_gpu_hours_today=used.get("2026-12-03", 0.0)
    )
    assert fresh.available


def test_usage_is_charged_to_the_local_day_it_happened_on() -> None:
    parts = split_by_local_day(at(0, 23), at(1, 1), PARIS)
    assert parts == [("2026-11-30", 3600.0), ("2026-12-01", 3600.0)]


@pytest.mark.parametrize(
    ("timezone", "slots", "message"),
    [
        ("Mars/Olympus", [], "unknown time zone"),
        ("UTC", [{"days": ["mon"], "start": "25:00", "end": "08:00"}], "slot 1 start"),
        ("UTC", [{"days": ["someday"], "start": "20:00", "end": "08:00"}], "slot 1: day"),
    ],
)
def test_bad_rules_are_named(timezone: str, slots: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sharing(timezone, slots, None, None)


def test_no_gpus_lent_means_unavailable() -> None:
    verdict = availability(Sharing(quota_gpus=0), now=at(0, 12), gpus=2, used_gpu_hours_today=0)
    assert not verdict.available and "no GPUs" in verdict.reason
