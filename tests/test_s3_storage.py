"""Pictures in S3-compatible storage (STORAGE_URL=s3://...), against moto's server started by the tests."""
from __future__ import annotations

import io
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from service.extension import EXTENSION
from service.storage import IMMUTABLE, LocalStorage, S3Storage, storage_from_url
from tests.conftest import jpeg_bytes
from tests.processes import PORT_BASE, Processes

pytestmark = pytest.mark.tdd_green

S3_PORT = PORT_BASE
DEAD_PORT = PORT_BASE + 1  # nothing listens there: an unreachable store
BUCKET = "pictures"
CDN = "https://cdn.example.com/pics"
PICTURE = "/api/v1/users/me/profile/picture"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a loopback port, for this module; stopped by PID."""
    processes = Processes(tmp_path_factory.mktemp("moto"))
    moto = str(Path(sys.executable).parent / "moto_server")
    processes.start("moto", [moto, "-H", "127.0.0.1", "-p", str(S3_PORT)], S3_PORT)
    yield f"http://127.0.0.1:{S3_PORT}"
    processes.stop_all()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket and the AWS variables boto3 reads; returns a client to inspect the bucket."""
    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def app_config(app_config, s3):
    return {**app_config, "STORAGE_URL": f"s3://{BUCKET}/media", "MEDIA_BASE_URL": CDN}


def _objects(s3):
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _upload(client, headers, data):
    boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(data), "me.jpg", content_type="image/jpeg")})
    return client.post(PICTURE, data=body, headers=headers, content_type=f"multipart/form-data; boundary={boundary}")


def _profile(client, user_id):
    return client.get(f"/api/v1/users/{user_id}/profile").json


def _key(url):
    return "media/" + url.removeprefix(CDN + "/")


def test_an_s3_url_selects_the_s3_backend_with_bucket_and_prefix(s3):
    storage = storage_from_url("s3://pictures/some/prefix")

    assert isinstance(storage, S3Storage) and (storage.bucket, storage.prefix) == ("pictures", "some/prefix")


def test_a_file_url_selects_the_local_backend(tmp_path):
    storage = storage_from_url(tmp_path.as_uri())

    assert isinstance(storage, LocalStorage) and storage.root == tmp_path.resolve()


def test_an_unknown_storage_url_is_refused():
    with pytest.raises(ValueError):
        storage_from_url("ftp://host/x")


def test_an_upload_writes_content_addressed_objects_under_the_prefix(client, register, s3):
    user_id, headers = register("ada")

    assert _upload(client, headers, jpeg_bytes()).status_code == 200

    profile = _profile(client, user_id)
    assert _objects(s3) == sorted([_key(profile["profile_picture_url"]),
                                   _key(profile["profile_picture_thumbnail_url"])])
    assert all(key.startswith(f"media/avatars/{user_id}/") for key in _objects(s3))


def test_picture_urls_are_built_from_media_base_url(client, register, s3):
    user_id, headers = register("ada")
    _upload(client, headers, jpeg_bytes())

    profile = _profile(client, user_id)

    assert profile["profile_picture_url"].startswith(f"{CDN}/avatars/{user_id}/")
    assert profile["profile_picture_thumbnail_url"].endswith("_128.jpg")


def test_objects_are_immutable_jpegs(client, register, s3):
    user_id, headers = register("ada")
    _upload(client, headers, jpeg_bytes())

    head = s3.head_object(Bucket=BUCKET, Key=_key(_profile(client, user_id)["profile_picture_url"]))

    assert head["CacheControl"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert head["ContentType"] == "image/jpeg"


def test_a_replaced_picture_is_removed_from_the_bucket(client, register, s3):
    user_id, headers = register("ada")
    _upload(client, headers, jpeg_bytes(color=(10, 20, 30)))
    old = _objects(s3)

    _upload(client, headers, jpeg_bytes(color=(200, 20, 30)))

    new = _objects(s3)
    assert len(new) == 2 and not set(old) & set(new)


def test_a_deleted_picture_is_removed_from_the_bucket(client, register, s3):
    _, headers = register("ada")
    _upload(client, headers, jpeg_bytes())

    assert client.delete(PICTURE, headers=headers).status_code == 200

    assert _objects(s3) == []


def test_an_unreachable_store_answers_503_json_and_keeps_the_old_picture(app, client, register, s3):
    user_id, headers = register("ada")
    _upload(client, headers, jpeg_bytes(color=(10, 20, 30)))
    before, objects = _profile(client, user_id), _objects(s3)
    storage = app.extensions[EXTENSION].storage
    reachable = storage.client
    storage.client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{DEAD_PORT}")
    try:
        response = _upload(client, headers, jpeg_bytes(color=(200, 20, 30)))
    finally:
        storage.client = reachable

    assert response.status_code == 503 and response.mimetype == "application/json"
    assert response.json["error"] == "Picture storage unavailable, try again later"
    assert _profile(client, user_id) == before and _objects(s3) == objects


def test_a_refused_upload_answers_503_and_keeps_the_old_picture(app, client, register, s3):
    user_id, headers = register("ada")
    _upload(client, headers, jpeg_bytes(color=(10, 20, 30)))
    before = _profile(client, user_id)
    app.extensions[EXTENSION].storage.bucket = "no-such-bucket"
    try:
        response = _upload(client, headers, jpeg_bytes(color=(200, 20, 30)))
    finally:
        app.extensions[EXTENSION].storage.bucket = BUCKET

    assert response.status_code == 503
    assert _profile(client, user_id) == before


def test_media_route_relays_objects_when_media_base_url_is_unset(app, client, register, s3):
    app.config["MEDIA_BASE_URL"] = None
    user_id, headers = register("ada")
    _upload(client, headers, jpeg_bytes())
    url = _profile(client, user_id)["profile_picture_url"]

    response = client.get(urlsplit(url).path)

    assert url.startswith("http://localhost/media/avatars/")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.data == s3.get_object(Bucket=BUCKET, Key="media/" + urlsplit(url).path.removeprefix("/media/"))[
        "Body"].read()
    assert "immutable" in response.headers["Cache-Control"]


def test_media_route_answers_404_for_a_missing_object(client, s3):
    assert client.get("/media/avatars/1/0000000000000000.jpg").status_code == 404


def _flyer_form():
    return {"title": "Bakery sale", "description": "Fresh bread", "location_address": "Main St. 1, Zurich",
            "lat": "47.37", "lng": "8.54", "image_1": (io.BytesIO(jpeg_bytes()), "a.jpg")}


def test_flyer_images_are_objects_with_cdn_urls_and_go_with_their_flyer(client, register, s3):
    _, headers = register("ada")
    created = client.post("/api/v1/flyers", data=_flyer_form(), headers=headers, content_type="multipart/form-data")
    flyer_id = created.json["id"]
    url = client.get(f"/api/v1/flyers/{flyer_id}").json["images"][0]["url"]

    assert url.startswith(f"{CDN}/flyers/{flyer_id}/") and _objects(s3) == [_key(url)]
    assert s3.head_object(Bucket=BUCKET, Key=_key(url))["CacheControl"] == IMMUTABLE

    assert client.delete(f"/api/v1/flyers/{flyer_id}", headers=headers).status_code in (200, 204)
    assert _objects(s3) == []


def test_a_flyer_whose_images_cannot_be_stored_is_not_created(app, client, register, s3):
    _, headers = register("ada")
    app.extensions[EXTENSION].storage.bucket = "no-such-bucket"
    try:
        response = client.post("/api/v1/flyers", data=_flyer_form(), headers=headers,
                               content_type="multipart/form-data")
    finally:
        app.extensions[EXTENSION].storage.bucket = BUCKET

    assert response.status_code == 503 and response.json["error"] == "Picture storage unavailable, try again later"
    assert client.get("/api/v1/users/1/flyers").json["count"] == 0
