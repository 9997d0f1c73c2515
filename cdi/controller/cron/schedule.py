"""When a DataImportCron looks at its source: standard five-field cron syntax, parsed by croniter.

A poll is due when the schedule has fired since the last one (or there was none), or when
someone asks for one: CDI's source poller writes ``cdi.kubevirt.io/storage.import.lastCronTime``
on the cron when it runs, and a value newer than the last poll triggers one here too. That
annotation is also how tests (and impatient users) poll now instead of waiting for the schedule.
"""

from __future__ import annotations

import datetime

from croniter import croniter

UTC = datetime.timezone.utc
STAMP = "%Y-%m-%dT%H:%M:%SZ"


class BadSchedule(ValueError):
    pass


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value, STAMP).replace(tzinfo=UTC)
    except ValueError:
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return None


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP)


def next_run(schedule: str, after: datetime.datetime) -> datetime.datetime:
    """The first time the schedule fires after ``after``."""
    if not croniter.is_valid(schedule) or len(schedule.split()) != 5:
        raise BadSchedule(f"invalid schedule {schedule!r}: expected five cron fields, e.g. '0 3 * * 1'")
    result: datetime.datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime.datetime)
    return result.astimezone(UTC)


def due(schedule: str, last_poll: datetime.datetime | None, requested: datetime.datetime | None,
        now: datetime.datetime) -> tuple[bool, float]:
    """(poll now?, seconds until the next scheduled poll after this one)."""
    if last_poll is None or (requested is not None and requested > last_poll):
        return True, (next_run(schedule, now) - now).total_seconds()
    upcoming = next_run(schedule, last_poll)
    if upcoming <= now:
        return True, (next_run(schedule, now) - now).total_seconds()
    return False, (upcoming - now).total_seconds()
