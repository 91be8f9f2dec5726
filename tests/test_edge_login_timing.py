"""Login takes as long whether or not the email has an account (no account discovery by timing)."""
import statistics
import time

import pytest

from service.config import load_config

pytestmark = pytest.mark.tdd_green

SAMPLES = 7


@pytest.fixture
def app_config(app_config):
    """The production password hashing (scrypt), not the tests' fast one."""
    return {**app_config, "PASSWORD_HASH_METHOD": load_config({})["PASSWORD_HASH_METHOD"]}


def _median_login_seconds(client, email):
    durations = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = client.post("/api/v1/auth/login", json={"email": email, "password": "wrong-password"})
        durations.append(time.perf_counter() - started)
        assert response.status_code == 401
    return statistics.median(durations)


def test_the_default_hashing_is_scrypt(app):
    assert app.config["PASSWORD_HASH_METHOD"].startswith("scrypt")


def test_known_and_unknown_emails_take_the_same_time_to_refuse(client, register):
    register("alice")
    client.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "x"})  # warm up
    known, unknown = [], []
    for _ in range(2):  # interleaved rounds, so the machine's drift falls on both alike
        known.append(_median_login_seconds(client, "alice@example.com"))
        unknown.append(_median_login_seconds(client, "nobody@example.com"))

    known_median, unknown_median = statistics.median(known), statistics.median(unknown)

    print(f"login refusal medians: known email {known_median * 1000:.1f} ms, unknown {unknown_median * 1000:.1f} ms")
    assert max(known_median, unknown_median) / min(known_median, unknown_median) < 1.2


def test_a_right_password_still_logs_in(client, register):
    user_id, _ = register("alice")

    response = client.post("/api/v1/auth/login", json={"email": "ALICE@example.com", "password": "password123"})

    assert response.status_code == 200
    assert response.json["user_id"] == user_id
