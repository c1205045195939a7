"""The page building blocks that need no database: escaping, times, durations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from swf_celery.ui.layout import capped, esc, parse_time, seconds, when


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-30T13:20:30.12345+00:00", datetime(2026, 11, 30, 13, 20, 30, 123450, timezone.utc)),
    ("2026-11-30T13:20:30.1+01:00",
     datetime(2026, 11, 30, 13, 20, 30, 100000, timezone(timedelta(hours=1)))),
    ("2026-11-30T13:20:30Z", datetime(2026, 11, 30, 13, 20, 30, tzinfo=timezone.utc)),
    ("2026-11-30", datetime(2026, 11, 30)),
])
def test_timestamps_as_postgres_json_writes_them(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


def test_times_are_shown_in_utc_and_bad_text_is_escaped() -> None:
    assert ">2026-11-30 12:20:30<" in when("2026-11-30T13:20:30+01:00")
    assert when("<b>") == "&lt;b&gt;"


@pytest.mark.parametrize(("value", "shown"), [
    (0.0042, "4 ms"), (12.34, "12.3 s"), (245, "4 min 05 s"), (7290, "2 h 01 min"), (None, ""),
])
def test_durations_for_people(value: float | None, shown: str) -> None:
    assert seconds(value) == shown


def test_capped_text_is_escaped_and_says_what_was_cut() -> None:
    html = capped('"<script>"', 70_000, 10)
    assert html.startswith("<pre>&quot;&lt;script&gt;&quot;</pre>")
    assert "showing 10 of 70,000 characters" in html
    assert esc("a\"b'c") == "a&quot;b&#x27;c"
