"""When a tunnelled machine's owner lets the cluster use it: time slots in a named time zone and
quotas (GPUs at once, GPU-hours per local day). Pure functions over an injected `now`, so a test
walks through a simulated day without sleeping.

`availability` answers "may work be placed here now, and by when must the machine be free":
the end of the current slot, or the moment the day's GPU-hours would run out, whichever comes
first. Inside `lead` of that moment the machine counts as unavailable (no new work; the running
instance is drained), so it is free before its slot ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Slot:
    """Shared from `start` to `end` on each of `days` (0 Monday); `end <= start` crosses midnight
    (the slot belongs to the day it starts on: Friday 20:00-08:00 ends Saturday 08:00)."""

    days: frozenset[int]
    start: time
    end: time

    def spans_from(self, day: date, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
        if day.weekday() not in self.days:
            return None
        begin = datetime.combine(day, self.start, tzinfo=tz)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return begin, datetime.combine(end_day, self.end, tzinfo=tz)


@dataclass(frozen=True)
class Sharing:
    timezone: str = "UTC"
    slots: tuple[Slot, ...] = ()  # none: always shared
    quota_gpus: int | None = None
    quota_gpu_hours_per_day: float | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str
    gpus: int  # GPUs the cluster may use now
    drain_by: datetime | None  # when the machine must be free; None: not bounded


def _clock(value: str, where: str) -> time:
    match = _HHMM.match(value)
    if match is None:
        raise ValueError(f"{where}: {value!r} is not a time HH:MM (00:00 to 23:59)")
    return time(int(match[1]), int(match[2]))


def parse_slots(raw: list[dict[str, Any]]) -> tuple[Slot, ...]:
    """Slots as stored ({"days": [0, 1] or ["mon"], "start": "20:00", "end": "08:00"}); a
    ValueError says which slot and field is wrong."""
    slots = []
    for n, item in enumerate(raw):
        where = f"slot {n + 1}"
        days: set[int] = set()
        for day in item.get("days", range(7)):
            if isinstance(day, str) and day.lower()[:3] in DAY_NAMES:
                days.add(DAY_NAMES.index(day.lower()[:3]))
            elif isinstance(day, int) and 0 <= day <= 6:
                days.add(day)
            else:
                raise ValueError(f"{where}: day {day!r} is not 0-6 (Monday 0) or a day name")
        start = _clock(str(item.get("start", "")), f"{where} start")
        end = _clock(str(item.get("end", "")), f"{where} end")
        if not days:
            raise ValueError(f"{where}: no days")
        slots.append(Slot(frozenset(days), start, end))
    return tuple(slots)


def parse_sharing(
    timezone: str,
    slots: list[dict[str, Any]],
    quota_gpus: int | None,
    quota_gpu_hours_per_day: float | None,
) -> Sharing:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {timezone!r} (an IANA name, e.g. Europe/Paris)"
        ) from None
    if quota_gpus is not None and quota_gpus < 0:
        raise ValueError("quota_gpus must be 0 or more")
    if quota_gpu_hours_per_day is not None and quota_gpu_hours_per_day < 0:
        raise ValueError("quota_gpu_hours_per_day must be 0 or more")
    return Sharing(timezone, parse_slots(slots), quota_gpus, quota_gpu_hours_per_day)


def local_day(now: datetime, tz: ZoneInfo) -> str:
    return now.astimezone(tz).date().isoformat()


def slot_end(sharing: Sharing, now: datetime) -> datetime | None:
    """The end of the shared time `now` is in (slots that touch are one); None: not in a slot.
    Without slots the machine is always shared: `now` itself is returned as "unbounded" by
    `availability`, which checks `sharing.slots` first."""
    tz = sharing.tz
    end: datetime | None = None
    at = now
    for _ in range(16):  # adjacent slots chain; a week of them is at most 14 spans
        covering = [
            span[1]
            for slot in sharing.slots
            for back in (1, 0)
            if (span := slot.spans_from(at.astimezone(tz).date() - timedelta(days=back), tz))
            and span[0] <= at < span[1]
        ]
        if not covering:
            break
        end = max(covering)
        at = end
    return end


def availability(
    sharing: Sharing,
    *,
    now: datetime,
    gpus: int,
    used_gpu_hours_today: float,
    lead: timedelta = timedelta(minutes=10),
) -> Availability:
    """May the cluster place work on this machine at `now` (an aware datetime)?"""
    lent = gpus if sharing.quota_gpus is None else min(gpus, sharing.quota_gpus)
    if sharing.quota_gpus == 0:
        return Availability(False, "its owner lends no GPUs (quota_gpus 0)", 0, None)
    ends = []
    if sharing.slots:
        end = slot_end(sharing, now)
        if end is None:
            return Availability(False, "outside its owner's time slots", lent, None)
        ends.append((end, f"its time slot ends at {end.isoformat()}"))
    if sharing.quota_gpu_hours_per_day is not None:
        left_h = sharing.quota_gpu_hours_per_day - used_gpu_hours_today
        if left_h <= 0:
            return Availability(False, "today's GPU-hour quota is spent", lent, None)
        spent_at = now + timedelta(hours=left_h / max(lent, 1))
        midnight = datetime.combine(
            now.astimezone(sharing.tz).date() + timedelta(days=1), time(0), tzinfo=sharing.tz
        )
        if spent_at < midnight:  # at midnight the day's quota starts afresh
            ends.append((spent_at, f"today's GPU-hour quota runs out at {spent_at.isoformat()}"))
    if not ends:
        return Availability(True, "shared", lent, None)
    drain_by, why = min(ends)
    if drain_by - now <= lead:
        return Availability(False, f"draining: {why}", lent, drain_by)
    return Availability(True, f"shared until {drain_by.isoformat()}", lent, drain_by)


def split_by_local_day(start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[str, float]]:
    """Seconds of [start, end) per local day: usage is charged to the day it happened on."""
    parts = []
    at = start
    while at < end:
        midnight = datetime.combine(
            at.astimezone(tz).date() + timedelta(days=1), time(0), tzinfo=tz
        )
        upto = min(end, midnight)
        parts.append((local_day(at, tz), (upto - at).total_seconds()))
        at = upto
    return parts
