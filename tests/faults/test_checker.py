"""The checker's judgement itself, on hand-made records (no processes): it must see staleness."""
from __future__ import annotations

import pytest

from tests.faults.checker import Checker, Read, Write, page_subject, profile_subject

pytestmark = [pytest.mark.faults, pytest.mark.tdd_green]


@pytest.fixture
def checker() -> Checker:
    checker = Checker("http://127.0.0.1:1", "token", [profile_subject(5)], {"B": "http://127.0.0.1:1"})
    # write k=0 answered at 1.0, k=1 answered at 2.0
    checker.writes = [Write("profile", 0, 0.9, 1.0, 200), Write("profile", 1, 1.9, 2.0, 200)]
    return checker


def judge(checker: Checker, *reads: Read):
    checker.reads = list(reads)
    return checker.result()


def test_a_read_started_after_a_newer_write_answered_showing_older_data_is_stale(checker):
    result = judge(checker, Read("profile", "B", 2.5, 2.6, 200, 0))

    assert (result.checked, result.stale) == (1, 1)
    assert result.max_staleness == pytest.approx(0.5)
    assert result.stale_by_target == {"B": 1}


def test_a_read_started_before_the_newer_write_answered_may_show_older_data(checker):
    result = judge(checker, Read("profile", "B", 1.95, 2.1, 200, 0))

    assert (result.checked, result.stale) == (1, 0)


def test_a_read_showing_the_latest_or_a_newer_unanswered_value_is_not_stale(checker):
    checker_writes = checker.writes + [Write("profile", 2, 2.9, None, None)]  # no answer: may or may not be seen
    checker.writes = checker_writes
    result = judge(checker, Read("profile", "B", 3.0, 3.1, 200, 1), Read("profile", "B", 3.0, 3.1, 200, 2))

    assert (result.checked, result.stale, result.write_errors) == (2, 0, 1)


def test_a_failed_write_does_not_raise_the_bar(checker):
    checker.writes = checker.writes + [Write("profile", 2, 2.9, 3.0, 503)]
    result = judge(checker, Read("profile", "B", 3.5, 3.6, 200, 1))

    assert (result.stale, result.write_5xx) == (0, 1)


def test_5xx_errors_and_unexpected_bodies_are_counted_not_checked(checker):
    result = judge(checker, Read("profile", "B", 2.5, 2.6, 502, None), Read("profile", "B", 2.5, 2.6, None, None),
                   Read("profile", "B", 2.5, 2.6, 200, None), Read("profile", "B", 2.5, 2.6, 404, None))

    assert (result.reads, result.checked, result.status_5xx, result.conn_errors, result.non_json,
            result.other_status) == (4, 0, 1, 1, 1, 1)


def test_since_judges_only_later_reads(checker):
    checker.reads = [Read("profile", "B", 2.5, 2.6, 200, 0), Read("profile", "B", 4.0, 4.1, 200, 1)]

    assert (checker.result(since=3.0).checked, checker.result(since=3.0).stale) == (1, 0)


def test_values_are_read_from_the_answers():
    profile, page = profile_subject(5), page_subject(5, 9)

    assert profile.extract({"bio": "v12"}) == 12
    assert profile.extract({"bio": "hello"}) is None
    assert page.extract({"results": [{"id": 8, "title": "t1"}, {"id": 9, "title": "t7"}]}) == 7
    assert page.extract({"results": [{"id": 8, "title": "t1"}]}) is None
