"""A write's answer and its commit agree: a write that answers an error has not happened."""
import io

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from models import Flyer, IdempotencyRecord, db
from models.idempotency import MARKER_OWNER
from service import commits
from service.errors import JSONErrors
from tests.conftest import POSTGRES_URL, jpeg_bytes

pytestmark = pytest.mark.tdd_green

LOST = OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
FIELDS = {"title": "Bakery sale", "location_address": "Main St. 1, Zurich", "lat": "47.37", "lng": "8.54"}


@pytest.fixture
def app_config(app_config):
    return {**app_config, "WRITE_VERIFY_SECONDS": 0.3}


@pytest.fixture
def commit_lands_then_raises(monkeypatch):
    """Arm: the next COMMIT lands, then its answer is lost (the connection died after the server committed)."""
    commit = db.session.commit

    def lands_then_raises():
        commit()
        monkeypatch.setattr(db.session, "commit", commit)
        raise LOST

    return lambda: monkeypatch.setattr(db.session, "commit", lands_then_raises)


@pytest.fixture
def commit_fails(monkeypatch):
    """Arm: the next COMMIT never reaches the server."""
    commit = db.session.commit

    def fails():
        monkeypatch.setattr(db.session, "commit", commit)
        raise LOST

    return lambda: monkeypatch.setattr(db.session, "commit", fails)


def _patch(client, headers, bio):
    return client.patch("/api/v1/users/me/profile", json={"bio": bio}, headers=headers)


def _post(client, headers, key):
    data = {**FIELDS, "image_1": (io.BytesIO(jpeg_bytes()), "a.jpg")}
    return client.post("/api/v1/flyers", data=data, headers={**headers, "Idempotency-Key": key},
                       content_type="multipart/form-data")


def _flyers(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Flyer))


def test_a_patch_whose_commit_landed_but_raised_answers_200_and_is_seen_by_the_next_read(
        client, register, commit_lands_then_raises):
    user_id, headers = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")  # cached with the old bio
    commit_lands_then_raises()

    response = _patch(client, headers, "landed")

    assert response.status_code == 200
    assert response.json["bio"] == "landed"
    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "landed"


def test_a_patch_whose_commit_failed_answers_503_and_changed_nothing(client, register, commit_fails):
    user_id, headers = register("alice")
    commit_fails()

    response = _patch(client, headers, "lost")

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json["error"]
    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == ""


def test_a_commit_whose_outcome_the_database_cannot_tell_answers_503_saying_so(
        client, register, commit_fails, monkeypatch):
    _, headers = register("alice")

    def unreachable(*args):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(commits, "_probe", unreachable)
    commit_fails()

    response = _patch(client, headers, "unknown")

    assert response.status_code == 503
    assert "may or may not" in response.json["error"]


def test_a_keyed_post_whose_commit_landed_but_raised_answers_201_and_its_retry_replays_it(
        app, client, register, commit_lands_then_raises):
    _, headers = register("alice")
    commit_lands_then_raises()

    first = _post(client, headers, "key-1")
    retry = _post(client, headers, "key-1")

    assert first.status_code == 201
    assert retry.json == first.json
    assert _flyers(app) == 1


def test_a_keyed_post_whose_commit_failed_answers_503_and_its_retry_creates_the_flyer_once(
        app, client, register, commit_fails):
    _, headers = register("alice")
    commit_fails()

    first = _post(client, headers, "key-1")
    retry = _post(client, headers, "key-1")

    assert first.status_code == 503
    assert retry.status_code == 201
    assert _flyers(app) == 1


def test_a_failing_session_teardown_keeps_the_answer(client, register, monkeypatch):
    _, headers = register("alice")

    def remove():
        raise LOST

    monkeypatch.setattr(db.session, "remove", remove)

    response = _patch(client, headers, "kept")

    assert response.status_code == 200
    assert response.json["bio"] == "kept"


def test_an_exception_raised_at_teardown_answers_json_not_the_servers_html(app_config, redis_client):
    from service import create_app
    app = create_app(app_config, redis_client=redis_client)

    @app.teardown_appcontext
    def broken(exc):
        raise RuntimeError("teardown bug")

    response = app.test_client().get("/healthz")

    assert response.status_code == 500
    assert response.json == {"error": "Internal server error", "details": {}}


@pytest.mark.parametrize("error, status", [(LOST, 503), (RuntimeError("bug"), 500)])
def test_whatever_escapes_the_application_answers_json(error, status):
    def application(environ, start_response):
        raise error

    started = []
    body = JSONErrors(application, retry_after=5)({}, lambda *args: started.append(args))

    assert started[0][0].startswith(str(status))
    assert dict(started[0][1])["Content-Type"] == "application/json"
    assert (status == 503) == ("Retry-After" in dict(started[0][1]))
    assert b'"error"' in b"".join(body)


def test_the_commit_check_finds_a_committed_marker(app):
    with app.app_context():
        db.session.add(IdempotencyRecord(user_id=MARKER_OWNER, key=" committed", expires_at=db.func.now()))
        db.session.commit()

        assert commits.verify(" committed", None) is True
        assert commits.verify(" never-written", None) is False


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # fails without DATABASE_URL
def test_the_commit_check_ends_a_transaction_still_running_on_a_cut_connection(app):
    assert POSTGRES_URL.startswith("postgres"), "set DATABASE_URL=postgresql://..."
    # The write's connection is gone from the client's side, but its backend still holds the marker.
    dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    orphan = psycopg.connect(dsn)
    orphan.execute("INSERT INTO idempotency_keys (user_id, key, created_at, expires_at) "
                   "VALUES (0, ' orphan', now(), now())")

    app.config["WRITE_VERIFY_SECONDS"] = 10  # past the probe's 1 s lock timeout
    with app.app_context():
        committed = commits.verify(" orphan", orphan.info.backend_pid)

    assert committed is False
    with pytest.raises(psycopg.OperationalError):
        orphan.execute("COMMIT")  # terminated: it can never commit now
    orphan.close()


def test_an_application_that_starts_its_answer_while_iterated_passes_through_unchanged():
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"streamed"

    started = []
    body = b"".join(JSONErrors(application, retry_after=5)({}, lambda *args: started.append(args)))

    assert body == b"streamed"
    assert started[0][0] == "200 OK"
