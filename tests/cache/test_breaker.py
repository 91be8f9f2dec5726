import pytest

from cache import Breaker

pytestmark = pytest.mark.tdd_green


@pytest.fixture
def breaker(clock):
    return Breaker(threshold=3, base_delay=1.0, max_delay=4.0, clock=clock)


def _open(breaker, failures=3):
    for _ in range(failures):
        breaker.record_failure()


def test_a_new_breaker_is_closed_and_allows_calls(breaker):
    assert breaker.state == "closed" and breaker.allow()


def test_the_breaker_stays_closed_below_the_threshold(breaker):
    _open(breaker, failures=2)

    assert breaker.state == "closed" and breaker.allow()


def test_a_success_resets_the_consecutive_failure_count(breaker):
    _open(breaker, failures=2)
    breaker.record_success()
    _open(breaker, failures=2)

    assert breaker.state == "closed"


def test_the_breaker_opens_at_the_threshold_and_refuses_calls(breaker):
    _open(breaker)

    assert breaker.state == "open" and not breaker.allow()


def test_after_the_delay_one_half_open_probe_is_let_through(breaker, clock):
    _open(breaker)
    clock.advance(1.0)

    assert [breaker.allow(), breaker.allow()] == [True, False]
    assert breaker.state == "half_open"


def test_a_successful_probe_closes_the_breaker(breaker, clock):
    _open(breaker)
    clock.advance(1.0)
    breaker.allow()

    breaker.record_success()

    assert breaker.state == "closed" and breaker.allow()


def test_a_failed_probe_reopens_with_a_doubled_delay(breaker, clock):
    _open(breaker)
    clock.advance(1.0)
    breaker.allow()

    breaker.record_failure()
    clock.advance(1.9)

    assert breaker.state == "open" and not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_the_delay_never_exceeds_max_delay(breaker, clock):
    _open(breaker)
    for delay in (1.0, 2.0, 4.0, 4.0):
        clock.advance(delay)
        assert breaker.allow()
        breaker.record_failure()

    clock.advance(4.0)

    assert breaker.allow()


def test_a_success_after_reopening_resets_the_delay(breaker, clock):
    _open(breaker)
    clock.advance(1.0)
    breaker.allow()
    breaker.record_failure()  # delay now 2 s
    clock.advance(2.0)
    breaker.allow()
    breaker.record_success()
    _open(breaker)

    clock.advance(1.0)

    assert breaker.allow()


def test_a_probe_that_never_reports_does_not_wedge_the_breaker(breaker, clock):
    _open(breaker)
    clock.advance(1.0)
    breaker.allow()  # the probe's outcome is lost

    clock.advance(1.0)

    assert breaker.allow()
