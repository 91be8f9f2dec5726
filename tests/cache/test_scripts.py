"""The lease scripts' own connection: reconnects after a failure, never shared across a fork."""
from collections.abc import Iterator

import pytest
import redis

from cache.scripts import DirectConnection, DirectScript

pytestmark = pytest.mark.tdd_green

ECHO_FIRST_KEY = "return KEYS[1]"


@pytest.fixture
def connection(real_client: redis.Redis) -> Iterator[DirectConnection]:
    connection = DirectConnection(real_client)
    yield connection
    connection.close()


@pytest.fixture
def script(real_client: redis.Redis, connection: DirectConnection) -> DirectScript:
    return DirectScript(real_client, connection, ECHO_FIRST_KEY)


def test_a_script_runs_and_is_loaded_on_first_use(script, real_client):
    real_client.script_flush()

    assert script(keys=["k"], args=[]) == b"k"


def test_a_killed_connection_fails_one_call_then_reconnects(script, real_client):
    script(keys=["k"], args=[])
    real_client.client_kill_filter(_type="normal", skipme=True)

    with pytest.raises(redis.ConnectionError):
        script(keys=["k"], args=[])
    assert script(keys=["k"], args=[]) == b"k"


def test_a_forked_process_opens_its_own_connection(script, connection, monkeypatch):
    script(keys=["k"], args=[])
    parents = connection._conn

    monkeypatch.setattr("cache.scripts.os.getpid", lambda: -1)

    assert script(keys=["k"], args=[]) == b"k" and connection._conn is not parents
    parents.disconnect()
