"""Idempotency-Key on the authenticated POSTs: a repeat answers what the first request answered."""
import io
import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from models import Flyer, IdempotencyRecord, db
from service import idempotency, writes
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.tdd_green

FIELDS = {"title": "Bakery sale", "description": "Fresh bread", "location_address": "Main St. 1, Zurich",
          "lat": "47.37", "lng": "8.54"}
PICTURE = "/api/v1/users/me/profile/picture"


def _post(client, headers, key=None, **overrides):
    data = {**FIELDS, **overrides, "image_1": (io.BytesIO(jpeg_bytes()), "a.jpg")}
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/api/v1/flyers", data=data, headers={**headers, **extra}, content_type="multipart/form-data")


def _upload(client, headers, key, color=(200, 0, 0)):
    data = {"image": (io.BytesIO(jpeg_bytes(color=color)), "me.jpg")}
    return client.post(PICTURE, data=data, headers={**headers, "Idempotency-Key": key},
                       content_type="multipart/form-data")


def _flyers(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Flyer))


def test_the_same_key_twice_answers_the_first_answer_and_creates_one_flyer(app, client, register):
    _, headers = register("alice")
    first = _post(client, headers, "key-1")

    again = _post(client, headers, "key-1")

    assert (again.status_code, again.json) == (201, first.json)
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _flyers(app) == 1


def test_posts_without_a_key_each_create_a_flyer(app, client, register):
    _, headers = register("alice")

    _post(client, headers)
    _post(client, headers)

    assert _flyers(app) == 2


def test_the_same_key_with_a_different_body_answers_422(app, client, register):
    _, headers = register("alice")
    _post(client, headers, "key-1")

    response = _post(client, headers, "key-1", title="Another sale")

    assert response.status_code == 422
    assert response.json["error"]
    assert _flyers(app) == 1


def test_the_same_key_on_another_endpoint_answers_422(client, register):
    _, headers = register("alice")
    _post(client, headers, "key-1")

    assert _upload(client, headers, "key-1").status_code == 422


@pytest.mark.parametrize("key", ["", " ", "a b", "tab\there", "ü", "x" * 256, "del\x7f"])
def test_a_malformed_key_answers_400(client, register, key):
    _, headers = register("alice")

    response = _post(client, headers, key)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json["details"]


@pytest.mark.parametrize("key", ["a", "x" * 255, "!~{}[]()<>@,;:\\\"/?=", "550e8400-e29b-41d4-a716-446655440000"])
def test_keys_of_1_to_255_visible_ascii_characters_are_accepted(client, register, key):
    _, headers = register("alice")

    assert _post(client, headers, key).status_code == 201


def test_another_users_same_key_is_independent(app, client, register):
    _, alice = register("alice")
    _, bob = register("bob")
    _post(client, alice, "shared")

    response = _post(client, bob, "shared", title="Bob's sale")

    assert response.status_code == 201
    assert response.json["title"] == "Bob's sale"
    assert _flyers(app) == 2


def test_a_key_is_replayed_until_24_hours_have_passed(app, client, register, clock):
    _, headers = register("alice")
    first = _post(client, headers, "key-1")
    clock.advance(hours=23, minutes=59)

    assert _post(client, headers, "key-1").json == first.json
    assert _flyers(app) == 1


def test_a_key_older_than_24_hours_runs_the_request_again(app, client, register, clock):
    _, headers = register("alice")
    first = _post(client, headers, "key-1")
    clock.advance(hours=24, seconds=1)

    again = _post(client, headers, "key-1")

    assert again.status_code == 201
    assert again.json["id"] != first.json["id"]
    assert "Idempotent-Replayed" not in again.headers


def _hold_first_create(monkeypatch):
    """Make the first create_flyer wait until released; return (entered, release) events."""
    entered, release = threading.Event(), threading.Event()
    original = writes.create_flyer
    calls = []

    def held(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(writes, "create_flyer", held)
    return entered, release


def _in_thread(function):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("response", function()))
    thread.start()
    return thread, result


def test_a_repeat_while_the_first_is_still_running_answers_409(app, client, register, monkeypatch):
    _, headers = register("alice")
    entered, release = _hold_first_create(monkeypatch)
    thread, first = _in_thread(lambda: _post(app.test_client(), headers, "key-1"))
    entered.wait(10)

    repeat = _post(client, headers, "key-1")
    release.set()
    thread.join(10)

    assert repeat.status_code == 409
    assert repeat.headers["Retry-After"]
    assert first["response"].status_code == 201
    assert _post(client, headers, "key-1").json == first["response"].json


def test_an_attempt_whose_lease_ran_out_is_taken_over_and_cannot_commit_after(app, client, register, clock,
                                                                           monkeypatch):
    _, headers = register("alice")
    entered, release = _hold_first_create(monkeypatch)
    thread, first = _in_thread(lambda: _post(app.test_client(), headers, "key-1"))
    entered.wait(10)
    clock.advance(seconds=app.config["IDEMPOTENCY_LEASE_SECONDS"] + 1)

    repeat = _post(client, headers, "key-1")
    release.set()
    thread.join(10)

    assert repeat.status_code == 201
    assert first["response"].status_code == 409  # fenced: its key belongs to the repeat now
    assert _flyers(app) == 1


def test_a_key_left_in_progress_by_a_dead_worker_frees_itself_after_its_lease(app, client, register, clock,
                                                                             monkeypatch):
    _, headers = register("alice")
    monkeypatch.setattr(idempotency, "release", lambda claim: None)  # the worker died: nothing released
    monkeypatch.setattr(writes, "create_flyer", lambda *args, **kwargs: 1 / 0)
    assert _post(client, headers, "key-1").status_code == 500
    monkeypatch.undo()
    assert _post(client, headers, "key-1").status_code == 409

    clock.advance(seconds=app.config["IDEMPOTENCY_LEASE_SECONDS"] + 1)

    assert _post(client, headers, "key-1").status_code == 201
    assert _flyers(app) == 1


def test_a_release_the_database_refused_is_retried_in_the_background(app, client, register, monkeypatch):
    _, headers = register("alice")
    delete_claim, failures = idempotency._delete_claim, []

    def refused_once(claim):
        if not failures:
            failures.append(claim)
            raise OperationalError("DELETE", {}, Exception("connection refused"))
        delete_claim(claim)

    monkeypatch.setattr(idempotency, "_delete_claim", refused_once)
    monkeypatch.setattr(writes, "create_flyer", lambda *args, **kwargs: 1 / 0)
    assert _post(client, headers, "key-1").status_code == 500

    deadline = time.monotonic() + 10
    while _keys(app) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert failures and _keys(app) == set()


def _keys(app):
    with app.app_context():
        return set(db.session.scalars(select(IdempotencyRecord.key).where(IdempotencyRecord.user_id != 0)))


def test_a_request_that_failed_frees_its_key_for_the_retry(app, client, register):
    _, headers = register("alice")
    bad = _post(client, headers, "key-1", lat="91")

    retry = _post(client, headers, "key-1")

    assert bad.status_code == 400
    assert retry.status_code == 201


def test_a_picture_upload_repeated_with_its_key_is_not_processed_again(client, register, monkeypatch):
    user_id, headers = register("alice")
    first = _upload(client, headers, "pic-1")
    calls = []
    monkeypatch.setattr(writes, "process_profile_picture", lambda *args, **kwargs: calls.append(1))

    again = _upload(client, headers, "pic-1")

    assert (again.status_code, again.json) == (200, first.json)
    assert calls == []


def test_a_key_without_a_token_answers_401(client):
    response = client.post("/api/v1/flyers", data=FIELDS, headers={"Idempotency-Key": "k"},
                           content_type="multipart/form-data")

    assert response.status_code == 401


def test_purging_deletes_only_expired_keys(app, client, register, clock):
    _, headers = register("alice")
    _post(client, headers, "old")
    clock.advance(hours=25)
    _post(client, headers, "new")

    with app.app_context():
        purged = idempotency.purge_expired(clock.now)
        left = set(db.session.scalars(select(IdempotencyRecord.key).where(IdempotencyRecord.user_id != 0)))

    assert purged >= 1
    assert left == {"new"}


def test_the_purge_command_reports_how_many_keys_it_deleted(app, client, register, clock):
    _, headers = register("alice")
    _post(client, headers, "old")
    clock.advance(hours=25)

    result = app.test_cli_runner().invoke(args=["purge-idempotency-keys"])

    assert result.exit_code == 0
    assert "deleted 3" in result.output  # the key and the two commit markers (registration, flyer)


@pytest.mark.parametrize("path", ["/api/v1/flyers", PICTURE])
def test_the_openapi_document_lists_the_key_and_its_409_and_422_answers(client, path):
    operation = client.get("/openapi.json").json["paths"][path]["post"]

    assert "Idempotency-Key" in [parameter["name"] for parameter in operation["parameters"]]
    assert {"409", "422"} <= set(operation["responses"])


def test_migrations_build_the_idempotency_table_with_its_unique_key(tmp_path):
    from sqlalchemy import create_engine, inspect

    from service import create_app
    url = f"sqlite:///{tmp_path}/migrated.db"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})

    result = app.test_cli_runner().invoke(args=["db", "upgrade"])

    assert result.exit_code == 0, result.output
    engine = create_engine(url)
    uniques = [set(unique["column_names"]) for unique in inspect(engine).get_unique_constraints("idempotency_keys")]
    engine.dispose()
    assert {"user_id", "key"} in uniques
