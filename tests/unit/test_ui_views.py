"""The dashboard's views: filters parsed as the CLI's, bucket choice, and the time axis across DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmtap.reports import catalog
from llmtap.ui import views

NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)


def test_options_are_the_cli_flags() -> None:
    opts = views.options({"since": ["7d"], "model": ["gpt-4o", "o3"], "property": ["feature=search"],
                          "score": ["accuracy>=90"], "rating": ["up"], "tz": ["Europe/Paris"]})  # fmt: skip
    assert (opts.model, opts.properties, opts.rating, opts.tz) == (
        ["gpt-4o", "o3"], [("feature", "search")], "up", "Europe/Paris"
    )  # fmt: skip
    assert opts.scores == [catalog.ScoreFilter("accuracy", ">=", 90)]
    assert opts.since == catalog.parse_when("7d")


def test_buckets_follow_the_range() -> None:
    assert views.bucket_for(views.options({"since": ["24h"]}), NOW) == "hour"
    assert views.bucket_for(views.options({"since": ["3d"]}), NOW) == "hour"
    assert views.bucket_for(views.options({"since": ["4d"]}), NOW) == "day"
    assert views.bucket_for(views.options({"since": ["2025-06-01"], "until": ["2025-06-02"]}), NOW) == "hour"
    assert views.bucket_for(views.options({}), NOW) == "day"


def test_hour_axis_across_a_dst_change() -> None:
    """Paris, 2025-03-30: 02:00 does not exist; the axis has 23 hours that day, one hour apart."""
    start = datetime(2025, 3, 30, 0, 0, tzinfo=UTC) - (datetime(2025, 3, 30, 1) - datetime(2025, 3, 30, 0))
    end = datetime(2025, 3, 30, 21, 59, tzinfo=UTC)
    ticks = views.axis("hour", "Europe/Paris", start, end)
    assert len(ticks) == 23 and {b - a for a, b in zip(ticks, ticks[1:], strict=False)} == {3600}
    assert ticks[0] == int(datetime(2025, 3, 29, 23, 0, tzinfo=UTC).timestamp())  # 00:00 in Paris


def test_day_axis_starts_at_local_midnights() -> None:
    start, end = datetime(2025, 3, 29, 12, tzinfo=UTC), datetime(2025, 3, 31, 12, tzinfo=UTC)
    ticks = views.axis("day", "Europe/Paris", start, end)
    assert [datetime.fromtimestamp(t, UTC).hour for t in ticks] == [23, 23, 22]  # UTC+1, then UTC+2
    assert ticks[2] - ticks[1] == 23 * 3600  # the short day


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"until": ["soon"]}, "until: expected a duration"),
        ({"score": ["accuracy~9"]}, "score: expected NAME OP"),
        ({"tz": ["Not a zone!"]}, "tz: expected a time zone name"),
    ],
)
def test_a_bad_filter_names_itself(params: dict[str, list[str]], message: str) -> None:
    with pytest.raises(views.ViewError, match=message) as e:
        views.options(params)
    assert e.value.status == 400


def test_short_ranges_get_minutes() -> None:
    assert views.bucket_for(views.options({"since": ["1h"]}), NOW) == "minute"
    assert views.bucket_for(views.options({"since": ["2h"]}), NOW) == "minute"
    assert views.bucket_for(views.options({"since": ["3h"]}), NOW) == "hour"
    start = datetime(2025, 6, 10, 11, 0, 30, tzinfo=UTC)
    ticks = views.axis("minute", "Asia/Kolkata", start, datetime(2025, 6, 10, 11, 59, 59, tzinfo=UTC))
    assert len(ticks) == 60 and ticks[0] == int(datetime(2025, 6, 10, 11, 0, tzinfo=UTC).timestamp())
