import fakeredis
import pytest

from cache import make_client

pytestmark = pytest.mark.tdd_green


def test_without_a_url_the_client_is_an_embedded_fakeredis():
    client = make_client(None)

    assert isinstance(client, fakeredis.FakeRedis)


def test_the_embedded_client_runs_lua():
    client = make_client(None)

    assert client.eval("return redis.call('HSET', KEYS[1], 'f', 'v')", 1, "h") == 1


def test_embedded_clients_do_not_share_data():
    make_client(None).set("k", b"v")

    assert make_client(None).get("k") is None


def test_a_url_client_uses_short_timeouts_and_bytes_replies():
    client = make_client("redis://127.0.0.1:6379/15", connect_timeout=0.2, socket_timeout=0.3)

    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.2, 0.3)
    assert kwargs["health_check_interval"] == 30 and not kwargs.get("decode_responses", False)


def test_a_url_client_answers_in_bytes(real_client):
    real_client.set("k", "v")

    assert real_client.get("k") == b"v"
