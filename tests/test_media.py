"""GET /media/<key>: stored pictures with immutable caching, and nothing outside MEDIA_ROOT."""
import os
from pathlib import Path

import pytest

from service.storage import LocalStorage
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.tdd_green

SECRET = b"\xff\xd8 not for the web \xff\xd9"


@pytest.fixture
def media_root(app):
    return Path(app.config["MEDIA_ROOT"])


@pytest.fixture
def stored(media_root):
    """A picture put into storage as the service would; returns (key, bytes)."""
    data = jpeg_bytes((64, 48))
    return LocalStorage(media_root).put("avatars/1", data, "_128"), data


@pytest.fixture
def secret(media_root):
    """A file next to MEDIA_ROOT that must never be served."""
    path = media_root.parent / "secret.jpg"
    path.write_bytes(SECRET)
    return path


def _get(client, path, **kwargs):
    response = client.get(path, **kwargs)
    response.get_data()  # buffer the body so the file can be closed
    response.close()
    return response


def test_a_stored_picture_is_served_as_jpeg(client, stored):
    key, data = stored

    response = _get(client, f"/media/{key}")

    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"
    assert response.data == data


def test_a_stored_picture_is_cached_for_a_year_as_immutable(client, stored):
    response = _get(client, f"/media/{stored[0]}")

    directives = {part.strip() for part in response.headers["Cache-Control"].split(",")}
    assert {"public", "max-age=31536000", "immutable"} <= directives
    assert response.headers["ETag"].startswith('"')


def test_the_etag_names_the_content_so_it_survives_a_rewrite(client, stored, media_root):
    key, data = stored
    first = _get(client, f"/media/{key}").headers["ETag"]
    (media_root / key).unlink()
    LocalStorage(media_root).put("avatars/1", data, "_128")

    assert _get(client, f"/media/{key}").headers["ETag"] == first


def test_a_matching_if_none_match_answers_304_without_a_body(client, stored):
    etag = _get(client, f"/media/{stored[0]}").headers["ETag"]

    response = _get(client, f"/media/{stored[0]}", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag
    assert "immutable" in response.headers["Cache-Control"]


def test_another_etag_answers_200(client, stored):
    response = _get(client, f"/media/{stored[0]}", headers={"If-None-Match": '"something-else"'})

    assert response.status_code == 200


def test_head_answers_the_headers(client, stored):
    response = client.head(f"/media/{stored[0]}")
    response.close()

    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"


@pytest.mark.parametrize("path", [
    "/media/avatars/1/0000000000000000.jpg",
    "/media/avatars/404",
    "/media/avatars/1",
    "/media/avatars",
])
def test_a_missing_file_or_a_folder_is_404_json(client, stored, path):
    response = _get(client, path)

    assert response.status_code == 404
    assert response.json == {"error": "Media not found", "details": {}}


@pytest.mark.parametrize("template", [
    "/media/../secret.jpg",
    "/media/%2e%2e/secret.jpg",
    "/media/%2E%2E%2Fsecret.jpg",
    "/media/avatars/1/../../../secret.jpg",
    "/media/avatars/1/%2e%2e/%2e%2e/%2e%2e/secret.jpg",
    "/media/avatars/..%2f..%2f..%2fsecret.jpg",
    "/media/avatars%5c..%5c..%5csecret.jpg",
    "/media/{secret}",
    "/media//{secret}",
    "/media/%2F{secret}",
    "/media/./avatars/../../secret.jpg",
    "/media/secret.jpg%00.jpg",
])
def test_a_path_out_of_the_media_root_is_404_json(client, secret, template):
    response = _get(client, template.format(secret=str(secret).lstrip("/")))

    assert response.status_code == 404
    assert set(response.json) == {"error", "details"}


def test_a_symlink_to_a_file_outside_the_root_is_404(client, secret, media_root):
    (media_root / "avatars").mkdir(parents=True, exist_ok=True)
    os.symlink(secret, media_root / "avatars" / "link.jpg")

    response = _get(client, "/media/avatars/link.jpg")

    assert response.status_code == 404
    assert response.json["error"] == "Media not found"


def test_a_symlinked_folder_outside_the_root_is_404(client, secret, media_root):
    media_root.mkdir(parents=True, exist_ok=True)
    os.symlink(secret.parent, media_root / "outside")

    response = _get(client, "/media/outside/secret.jpg")

    assert response.status_code == 404


def test_a_file_still_being_written_is_not_served(client, media_root):
    (media_root / "avatars" / "1").mkdir(parents=True)
    (media_root / "avatars" / "1" / ".tmp3k2j9x.tmp").write_bytes(b"\xff\xd8 half")

    response = _get(client, "/media/avatars/1/.tmp3k2j9x.tmp")

    assert response.status_code == 404


def test_post_to_media_is_405_json(client, stored):
    response = client.post(f"/media/{stored[0]}")

    assert response.status_code == 405
    assert set(response.json) == {"error", "details"}
