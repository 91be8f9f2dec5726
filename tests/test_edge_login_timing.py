"""Login takes as long whether or not the email has an account (no account discovery by timing)."""
import statistics
import time

import pytest

from service.config import load_config

pytestmark = pytest.mark.tdd_green

PAIRS = 15


@pytest.fixture
def app_config(app_config):
    """The production password hashing (scrypt), not the tests' fast one."""
    return {**app_config, "PASSWORD_HASH_METHOD": load_config({})["PASSWORD_HASH_METHOD"]}


def _login_seconds(client, email):
    """(CPU seconds, wall seconds) of one refused login.

    The test client runs the app in this thread, so the thread's CPU time is the request's
    work, which other processes on this shared 2-core machine do not blur as they blur the
    wall clock (a client sees the wall clock; on an idle machine the two agree).
    """
    cpu, wall = time.thread_time(), time.perf_counter()
    response = client.post("/api/v1/auth/login", json={"email": email, "password": "wrong-password"})
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    assert response.status_code == 401
    return cpu, wall


def test_the_default_hashing_is_scrypt(app):
    assert app.config["PASSWORD_HASH_METHOD"].startswith("scrypt")


def test_known_and_unknown_emails_take_the_same_time_to_refuse(client, register):
    register("alice")
    _login_seconds(client, "nobody@example.com")  # warm up
    known, unknown = [], []
    for pair in range(PAIRS):  # in turns, each first every other time, so the machine's drift falls on both
        for email in (("alice@example.com", "nobody@example.com") if pair % 2 else
                      ("nobody@example.com", "alice@example.com")):
            (known if email.startswith("alice") else unknown).append(_login_seconds(client, email))

    (known_cpu, known_wall), (unknown_cpu, unknown_wall) = (
        [statistics.median(column) for column in zip(*samples)] for samples in (known, unknown))

    print(f"login refusal medians, CPU (wall): known email {known_cpu * 1000:.1f} ms ({known_wall * 1000:.1f}), "
          f"unknown {unknown_cpu * 1000:.1f} ms ({unknown_wall * 1000:.1f})")
    assert max(known_cpu, unknown_cpu) / min(known_cpu, unknown_cpu) < 1.2


def test_a_right_password_still_logs_in(client, register):
    user_id, _ = register("alice")

    response = client.post("/api/v1/auth/login", json={"email": "ALICE@example.com", "password": "password123"})

    assert response.status_code == 200
    assert response.json["user_id"] == user_id
