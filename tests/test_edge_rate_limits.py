"""Rate limits: counted in the cache's Redis, in process memory while it fails, never waiting on a hung one."""
import socket
import threading
import time

import pytest

from models import db
from service import create_app

pytestmark = pytest.mark.tdd_green

HUNG_REDIS_PORTS = range(7380, 7400)  # this project's loopback range for such helpers


@pytest.fixture
def limited(app_config, redis_client):
    """Build an app with login limited to 3 a minute; ``redis_client=None`` makes it connect by REDIS_URL."""
    apps = []

    def limited(client=redis_client, **config):
        app = create_app({**app_config, "RATE_LIMIT_ENABLED": True, "RATE_LIMIT_AUTH": "3 per minute", **config},
                         redis_client=client)
        apps.append(app)
        with app.app_context():
            db.create_all()
        return app.test_client()

    yield limited
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def hung_redis():
    """A TCP server that accepts connections and never answers; yields its redis:// URL."""
    server = socket.socket()
    for port in HUNG_REDIS_PORTS:
        try:
            server.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the hung Redis")
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def _login(client):
    return client.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "password123"})


def test_the_fourth_login_in_a_minute_is_429_and_counted_in_the_given_redis(limited, redis_client):
    client = limited()

    statuses = [_login(client).status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 429]
    assert redis_client.keys("*pf-ratelimit*")


def test_the_429_says_when_to_retry_as_json(limited):
    client = limited()
    for _ in range(3):
        _login(client)

    response = _login(client)

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.json["error"]


def test_limits_hold_while_redis_is_down(limited, redis_server):
    redis_server.connected = False
    client = limited()

    statuses = [_login(client).status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 429]


def test_limits_hold_when_redis_fails_mid_window(limited, redis_server):
    client = limited()
    _login(client)
    redis_server.connected = False

    statuses = [_login(client).status_code for _ in range(4)]

    assert statuses[-1] == 429  # memory counts afresh from the failure on: at most 3 more pass


def test_the_environments_redis_never_replaces_the_given_client(limited, redis_client, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    client = limited()

    statuses = [_login(client).status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 429]
    assert redis_client.keys("*pf-ratelimit*")


def test_a_hung_redis_holds_no_login_longer_than_half_a_second(limited, hung_redis):
    """Each Redis call gives up after REDIS_SOCKET_TIMEOUT (0.1 s); about 0.25 s here, asserted with a margin."""
    client = limited(client=None, REDIS_URL=hung_redis, REDIS_SOCKET_TIMEOUT=0.1)

    durations, statuses = [], []
    for _ in range(5):
        started = time.perf_counter()
        statuses.append(_login(client).status_code)
        durations.append(time.perf_counter() - started)

    assert statuses == [401, 401, 401, 429, 429]
    print("login durations with a hung Redis (s):", [round(d, 3) for d in durations])
    assert max(durations) < 0.5 * 2, durations


def test_a_live_redis_answers_logins_at_once(limited, redis_client):
    client = limited()

    started = time.perf_counter()
    _login(client)

    assert time.perf_counter() - started < 0.5
