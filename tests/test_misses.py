"""The miss path's database handling: idle-only pings and a read retried once on a dead connection."""
import pytest
from sqlalchemy.exc import OperationalError

from models import db, queries
from service import create_app

pytestmark = pytest.mark.tdd_green


def _dead_connection_error() -> OperationalError:
    error = OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
    error.connection_invalidated = True
    return error


def test_a_read_on_a_dead_connection_is_run_once_more(client, register, monkeypatch):
    user_id, _ = register("alice")
    original, calls = queries.read_creator, []

    def dead_once(conn, uid, now):
        calls.append(uid)
        if len(calls) == 1:
            raise _dead_connection_error()
        return original(conn, uid, now)
    monkeypatch.setattr(queries, "read_creator", dead_once)

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 200
    assert response.json["username"] == "alice"
    assert len(calls) == 2


def test_a_read_failing_for_another_reason_is_not_run_again(client, register, monkeypatch):
    user_id, _ = register("alice")
    calls = []

    def failing(conn, uid, now):
        calls.append(uid)
        raise OperationalError("SELECT", {}, Exception("statement timeout"))
    monkeypatch.setattr(queries, "read_creator", failing)

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 503
    assert len(calls) == 2  # once in the fast path, once in the view: neither retried it


def _pings(app_config, redis_client, monkeypatch, idle_seconds):
    app = create_app({**app_config, "DB_PING_IDLE_SECONDS": idle_seconds}, redis_client=redis_client)
    client = app.test_client()
    with app.app_context():
        dialect = db.engine.dialect
    pings = []
    do_ping = dialect.do_ping
    monkeypatch.setattr(dialect, "do_ping", lambda conn: pings.append(1) or do_ping(conn))
    for user_id in (1, 2, 3):
        client.get(f"/api/v1/users/{user_id}/profile")
    with app.app_context():
        db.engine.dispose()
    return len(pings)


def test_a_connection_in_steady_use_is_not_pinged(app_config, redis_client, monkeypatch):
    assert _pings(app_config, redis_client, monkeypatch, 3600) <= 1  # at most the first, new connection's


def test_a_connection_idle_for_the_setting_is_pinged_on_checkout(app_config, redis_client, monkeypatch):
    assert _pings(app_config, redis_client, monkeypatch, 0) >= 3
