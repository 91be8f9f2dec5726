"""Profile picture upload and delete over HTTP: stored variants, replaced files, refused uploads, faults."""
import io
import random
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy.exc import OperationalError
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from models import db
from service import writes
from tests.conftest import jpeg_bytes
from tests.images import decode, encode, exif_bytes, photo, png_header_only, quadrants

pytestmark = pytest.mark.tdd_green

PICTURE = "/api/v1/users/me/profile/picture"
MEDIA_URL = r"http://localhost/media/avatars/{}/[0-9a-f]{{16}}{}\.jpg"


def _upload(client, headers, data, filename="me.jpg", content_type="image/jpeg", field="image"):
    # Encoded in memory: the test client would spool a large body to a temporary file it never closes.
    boundary, body = encode_multipart({field: FileStorage(io.BytesIO(data), filename, content_type=content_type)})
    return client.post(PICTURE, data=body, headers=headers,
                       content_type=f"multipart/form-data; boundary={boundary}")


def _media(client, url):
    response = client.get(urlsplit(url).path)
    response.get_data()  # buffer the body so the file can be closed
    response.close()
    return response


def _storage_listing(app):
    """Every directory and file under MEDIA_ROOT, with each file's bytes."""
    root = Path(app.config["MEDIA_ROOT"])
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
            for path in sorted(root.rglob("*"))}


def _files(app):
    return {name for name, data in _storage_listing(app).items() if data is not None}


def _keys(profile):
    return {urlsplit(profile[field]).path.removeprefix("/media/")
            for field in ("profile_picture_url", "profile_picture_thumbnail_url")}


def _picture_fields(client, user_id):
    profile = client.get(f"/api/v1/users/{user_id}/profile").json
    return profile["profile_picture_url"], profile["profile_picture_thumbnail_url"]


def _tiff_pages(count):
    pages = [Image.new("RGB", (64, 64), (40 * n, 0, 0)) for n in range(count)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _truncated_jpeg():
    data = encode(photo((640, 480), seed=3), quality=90)
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "random bytes": (random.Random(7).randbytes(4096), "photo.jpg", 400),
    "text named .jpg": (b"just some notes, not a picture\n" * 20, "notes.jpg", 400),
    "truncated JPEG": (_truncated_jpeg(), "cut.jpg", 400),
    "PNG declaring 100000x100000": (png_header_only(100_000, 100_000), "bomb.png", 400),
    "zero bytes": (b"", "empty.jpg", 400),
    "SVG": (b'<svg xmlns="http://www.w3.org/2000/svg" width="500" height="500">'
            b'<rect width="500" height="500" fill="red"/></svg>', "vector.svg", 400),
    "multi-page TIFF": (_tiff_pages(3), "scan.tiff", 400),
    "6 MB": (b"\xff\xd8\xff\xe0" + random.Random(8).randbytes(6 * 2**20), "huge.jpg", 413),
    "just over 5 MB": (b"\xff\xd8\xff\xe0" + bytes(5 * 2**20 - 3), "big.jpg", 413),
}


def test_upload_answers_the_profile_with_absolute_picture_urls(client, register, jpeg):
    user_id, headers = register("alice")

    response = _upload(client, headers, jpeg)

    assert response.status_code == 200
    assert response.json["user_id"] == user_id
    assert re.fullmatch(MEDIA_URL.format(user_id, ""), response.json["profile_picture_url"])
    assert re.fullmatch(MEDIA_URL.format(user_id, "_128"), response.json["profile_picture_thumbnail_url"])


def test_uploaded_picture_is_served_as_a_500_wide_jpeg_and_a_128_thumbnail(client, register):
    _, headers = register("alice")

    profile = _upload(client, headers, jpeg_bytes((800, 600))).json
    full = _media(client, profile["profile_picture_url"])
    thumbnail = _media(client, profile["profile_picture_thumbnail_url"])

    assert full.status_code == thumbnail.status_code == 200
    assert full.mimetype == thumbnail.mimetype == "image/jpeg"
    assert (decode(full.data).format, decode(full.data).size) == ("JPEG", (500, 375))
    assert (decode(thumbnail.data).format, decode(thumbnail.data).size) == ("JPEG", (128, 128))


def test_uploaded_files_are_the_only_files_in_storage(app, client, register, jpeg):
    user_id, headers = register("alice")

    profile = _upload(client, headers, jpeg).json

    assert _files(app) == _keys(profile)


def test_a_second_upload_replaces_the_first_and_deletes_its_files(app, client, register):
    _, headers = register("alice")
    first = _upload(client, headers, jpeg_bytes(color=(200, 0, 0))).json

    second = _upload(client, headers, jpeg_bytes(color=(0, 0, 200))).json

    assert second["profile_picture_url"] != first["profile_picture_url"]
    assert _files(app) == _keys(second)
    assert _media(client, first["profile_picture_url"]).status_code == 404
    assert _media(client, second["profile_picture_url"]).status_code == 200


def test_uploading_the_same_picture_again_keeps_its_files(app, client, register, jpeg):
    _, headers = register("alice")
    first = _upload(client, headers, jpeg).json
    before = _storage_listing(app)

    second = _upload(client, headers, jpeg)

    assert second.status_code == 200
    assert second.json["profile_picture_url"] == first["profile_picture_url"]
    assert _storage_listing(app) == before
    assert _media(client, first["profile_picture_thumbnail_url"]).status_code == 200


def test_delete_answers_the_profile_without_pictures_and_deletes_the_files(app, client, register, jpeg):
    user_id, headers = register("alice")
    uploaded = _upload(client, headers, jpeg).json

    response = client.delete(PICTURE, headers=headers)

    assert response.status_code == 200
    assert response.json["user_id"] == user_id
    assert response.json["profile_picture_url"] is None
    assert response.json["profile_picture_thumbnail_url"] is None
    assert _files(app) == set()
    assert _media(client, uploaded["profile_picture_url"]).status_code == 404
    assert _picture_fields(client, user_id) == (None, None)


def test_delete_without_a_picture_answers_the_profile(client, register):
    _, headers = register("alice")

    response = client.delete(PICTURE, headers=headers)

    assert response.status_code == 200
    assert response.json["profile_picture_url"] is None


@pytest.mark.parametrize("method", ["post", "delete"])
def test_picture_without_a_token_is_401(client, method):
    response = getattr(client, method)(PICTURE)

    assert response.status_code == 401
    assert set(response.json) == {"error", "details"}


def test_upload_with_a_forged_token_is_401(client, register, jpeg):
    _, headers = register("alice")

    response = _upload(client, {"Authorization": headers["Authorization"][:-2] + "xx"}, jpeg)

    assert response.status_code == 401


@pytest.mark.parametrize("kwargs", [
    {"data": b"\xff\xd8\xff\xe0 raw jpeg", "content_type": "image/jpeg"},
    {"json": {"image": "aGVsbG8="}},
    {"data": {"image": "not a file"}, "content_type": "application/x-www-form-urlencoded"},
], ids=["raw body", "json", "urlencoded form"])
def test_upload_that_is_not_multipart_is_415(client, register, kwargs):
    _, headers = register("alice")

    response = client.post(PICTURE, headers=headers, **kwargs)

    assert response.status_code == 415
    assert set(response.json) == {"error", "details"}


def test_upload_without_the_image_field_is_400(client, register, jpeg):
    _, headers = register("alice")

    response = _upload(client, headers, jpeg, field="picture")

    assert response.status_code == 400
    assert response.json["details"] == {"image": ["An image file is required."]}


def test_upload_with_an_unknown_field_is_400(client, register, jpeg):
    _, headers = register("alice")

    response = client.post("/api/v1/users/me/profile/picture", headers=headers, content_type="multipart/form-data",
                           data={"image": (io.BytesIO(jpeg), "a.jpg"), "caption": "hi"})

    assert response.status_code == 400
    assert response.json["details"] == {"caption": ["Unknown field."]}


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_a_bad_upload_is_refused_and_keeps_the_previous_picture(app, client, register, jpeg, name):
    data, filename, status = BAD_UPLOADS[name]
    user_id, headers = register("alice")
    _upload(client, headers, jpeg)
    pictures, files = _picture_fields(client, user_id), _storage_listing(app)

    response = _upload(client, headers, data, filename)

    assert response.status_code == status
    assert set(response.json) == {"error", "details"} and response.json["error"]
    assert _picture_fields(client, user_id) == pictures
    assert _storage_listing(app) == files


@pytest.mark.parametrize("name, words", [
    ("random bytes", "not a supported image"),
    ("SVG", "not a supported image"),
    ("multi-page TIFF", "not a supported image"),
    ("truncated JPEG", "corrupt or truncated"),
    ("PNG declaring 100000x100000", "too large"),
    ("zero bytes", "empty"),
])
def test_a_bad_upload_names_the_problem_under_the_image_field(client, register, name, words):
    _, headers = register("alice")

    response = _upload(client, headers, BAD_UPLOADS[name][0], BAD_UPLOADS[name][1])

    assert words in response.json["error"]
    assert response.json["details"] == {"image": [response.json["error"]]}


def test_an_oversized_upload_is_refused_before_it_is_read(client, register, monkeypatch):
    _, headers = register("alice")
    processed = []
    monkeypatch.setattr(writes, "process_profile_picture", lambda *args, **kwargs: processed.append(args))

    response = _upload(client, headers, BAD_UPLOADS["6 MB"][0])

    assert response.status_code == 413
    assert response.json == {"error": "Request body too large", "details": {}}
    assert processed == []


def test_a_failed_commit_keeps_the_old_picture_and_leaves_no_new_files(app, client, register, monkeypatch):
    user_id, headers = register("alice")
    _upload(client, headers, jpeg_bytes(color=(200, 0, 0)))
    pictures, files = _picture_fields(client, user_id), _storage_listing(app)
    commit = db.session.commit
    failures = []

    def commit_fails_once():
        if not failures:
            failures.append(True)
            db.session.flush()  # the update reached the database, then the transaction is lost
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        commit()

    monkeypatch.setattr(db.session, "commit", commit_fails_once)

    response = _upload(client, headers, jpeg_bytes(color=(0, 0, 200)))

    assert response.status_code == 503 and failures
    assert _picture_fields(client, user_id) == pictures
    assert _storage_listing(app) == files


def test_a_failed_commit_of_a_first_picture_leaves_no_files(app, client, register, monkeypatch, jpeg):
    user_id, headers = register("alice")

    def commit_fails():
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(db.session, "commit", commit_fails)
    response = _upload(client, headers, jpeg)
    monkeypatch.undo()

    assert response.status_code == 503
    assert _picture_fields(client, user_id) == (None, None)
    assert _files(app) == set()


def test_a_failed_delete_commit_keeps_the_picture_and_its_files(app, client, register, monkeypatch, jpeg):
    user_id, headers = register("alice")
    _upload(client, headers, jpeg)
    pictures, files = _picture_fields(client, user_id), _storage_listing(app)

    def commit_fails():
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(db.session, "commit", commit_fails)
    response = client.delete(PICTURE, headers=headers)
    monkeypatch.undo()

    assert response.status_code == 503
    assert _picture_fields(client, user_id) == pictures
    assert _storage_listing(app) == files


def test_every_reader_sees_the_new_picture_at_once(client, register, jpeg):
    user_id, headers = register("alice")
    warm = client.get(f"/api/v1/users/{user_id}/profile")

    uploaded = _upload(client, headers, jpeg).json
    read = client.get(f"/api/v1/users/{user_id}/profile", headers={"If-None-Match": warm.headers["ETag"]})

    assert read.status_code == 200
    assert read.json["profile_picture_url"] == uploaded["profile_picture_url"]
    assert client.get("/api/v1/users/me/profile", headers=headers).json == read.json


def test_every_reader_sees_the_deleted_picture_at_once(client, register, jpeg):
    user_id, headers = register("alice")
    _upload(client, headers, jpeg)
    client.get(f"/api/v1/users/{user_id}/profile")

    client.delete(PICTURE, headers=headers)

    assert _picture_fields(client, user_id) == (None, None)


def test_a_creators_flyers_show_the_new_thumbnail_at_once(client, register, add_flyer):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)
    _upload(client, headers, jpeg_bytes(color=(200, 0, 0)))
    client.get(f"/api/v1/users/{user_id}/flyers")
    client.get(f"/api/v1/flyers/{flyer_id}")

    thumbnail = _upload(client, headers, jpeg_bytes(color=(0, 0, 200))).json["profile_picture_thumbnail_url"]

    page = client.get(f"/api/v1/users/{user_id}/flyers").json
    assert page["results"][0]["creator"]["profile_picture_url"] == thumbnail
    assert client.get(f"/api/v1/flyers/{flyer_id}").json["creator"]["profile_picture_url"] == thumbnail


def test_a_creators_flyers_lose_the_deleted_thumbnail_at_once(client, register, add_flyer, jpeg):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)
    _upload(client, headers, jpeg)
    client.get(f"/api/v1/users/{user_id}/flyers")
    client.get(f"/api/v1/flyers/{flyer_id}")

    client.delete(PICTURE, headers=headers)

    assert client.get(f"/api/v1/users/{user_id}/flyers").json["results"][0]["creator"]["profile_picture_url"] is None
    assert client.get(f"/api/v1/flyers/{flyer_id}").json["creator"]["profile_picture_url"] is None


def test_the_picture_is_rotated_and_stripped_of_metadata(client, register):
    _, headers = register("alice")
    data = encode(quadrants((1200, 800)), quality=95, exif=exif_bytes(orientation=6, gps=True))

    profile = _upload(client, headers, data).json
    stored = decode(_media(client, profile["profile_picture_url"]).data)

    assert stored.size == (500, 750)
    assert not stored.getexif() and "icc_profile" not in stored.info


def _upload_elsewhere(app, client, headers, data):
    """Run a whole upload as another request would, in its own app context and database session."""
    with app.app_context():
        response = _upload(client, headers, data)
    assert response.status_code == 200, response.json


def test_an_upload_that_lands_while_the_same_picture_is_reuploaded_leaves_no_dangling_url(
        app, client, register, monkeypatch):
    user_id, headers = register("alice")
    first, second = jpeg_bytes(color=(200, 0, 0)), jpeg_bytes(color=(0, 0, 200))
    _upload(client, headers, first)
    lock = writes._user_for_update
    calls = []

    def other_upload_lands_first(uid):
        if not calls:
            calls.append(uid)
            _upload_elsewhere(app, client, headers, second)  # replaces `first` and deletes its files
        return lock(uid)

    monkeypatch.setattr(writes, "_user_for_update", other_upload_lands_first)

    profile = _upload(client, headers, first).json

    assert calls and _files(app) == _keys(profile)
    assert _media(client, profile["profile_picture_url"]).status_code == 200


def test_an_upload_that_lands_before_the_previous_files_are_deleted_leaves_no_dangling_url(
        app, client, register, monkeypatch):
    user_id, headers = register("alice")
    first, second = jpeg_bytes(color=(200, 0, 0)), jpeg_bytes(color=(0, 0, 200))
    _upload(client, headers, first)
    commit = db.session.commit
    calls = []

    def other_upload_between_commit_and_cleanup():
        commit()
        if not calls:
            calls.append(True)
            _upload_elsewhere(app, client, headers, first)  # puts `first` back before it is deleted

    monkeypatch.setattr(db.session, "commit", other_upload_between_commit_and_cleanup)

    _upload(client, headers, second)

    profile = client.get(f"/api/v1/users/{user_id}/profile").json
    assert calls and _files(app) == _keys(profile)
    assert _media(client, profile["profile_picture_url"]).status_code == 200


def test_a_commit_that_lands_but_reports_failure_keeps_the_new_files_and_deletes_the_old(
        app, client, register, monkeypatch):
    user_id, headers = register("alice")
    _upload(client, headers, jpeg_bytes(color=(200, 0, 0)))
    commit = db.session.commit
    failures = []

    def commit_then_lose_the_answer():
        commit()
        if not failures:
            failures.append(True)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(db.session, "commit", commit_then_lose_the_answer)

    response = _upload(client, headers, jpeg_bytes(color=(0, 0, 200)))

    profile = client.get(f"/api/v1/users/{user_id}/profile").json
    assert response.status_code == 200  # the commit check found the write in the database
    assert response.json == profile
    assert _files(app) == _keys(profile)


def test_a_commit_the_database_cannot_confirm_deletes_no_file(app, client, register, monkeypatch):
    user_id, headers = register("alice")
    _upload(client, headers, jpeg_bytes(color=(200, 0, 0)))
    pictures, files = _picture_fields(client, user_id), _files(app)
    lost = OperationalError("COMMIT", {}, Exception("server closed the connection"))

    def database_down(*args, **kwargs):
        raise lost

    def commit_fails():
        monkeypatch.setattr(db.session, "execute", database_down)
        raise lost

    monkeypatch.setattr(db.session, "commit", commit_fails)
    response = _upload(client, headers, jpeg_bytes(color=(0, 0, 200)))
    monkeypatch.undo()

    assert response.status_code == 503
    assert _picture_fields(client, user_id) == pictures
    assert _files(app) > files  # the new files stay: an orphan is harmless, a dangling URL is not
