"""Hostile uploads: every file of tests/hostile_images.py answers 4xx (or 2xx if it is a valid image) within 2 s,
the decoder stays under its memory budget, nothing is stored, the previous picture stays; a full pool answers 503."""
import io
import threading
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from service.decoder import DecoderSettings, pool_for
from tests.conftest import jpeg_bytes
from tests.hostile_images import STOWAWAYS, corpus, mutations, scan_bomb

pytestmark = pytest.mark.tdd_green

PICTURE = "/api/v1/users/me/profile/picture"
ANSWER_WITHIN = 2.0  # seconds: the bound for a hostile upload
CORPUS = corpus()
MUTATIONS = mutations(200)
FLYER_FIELDS = {"title": "Bakery sale", "location_address": "Main St. 1, Zurich", "lat": "47.37", "lng": "8.54"}


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: what a hostile image does happens before the database (the suite's other tests cover PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'test.db'}"


def _post(client, url, headers, fields):
    # Encoded in memory: the test client would spool a large body to a temporary file it never closes.
    boundary, body = encode_multipart(fields)
    return client.post(url, data=body, headers=headers, content_type=f"multipart/form-data; boundary={boundary}")


def _upload(client, headers, data):
    return _post(client, PICTURE, headers, {"image": FileStorage(io.BytesIO(data), "photo.jpg", "image/jpeg")})


def _pool(app):
    return pool_for(DecoderSettings.from_config(app.config))


def _media(app):
    root = Path(app.config["MEDIA_ROOT"])
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _profile(client, user_id):
    return client.get(f"/api/v1/users/{user_id}/profile").json


def _stored_file(client, url):
    response = client.get(urlsplit(url).path)
    data = response.get_data()
    response.close()
    return data


@pytest.fixture
def pictured_user(app, client, register):
    """A user with a picture already; returns ``(user_id, headers)``."""
    user_id, headers = register("alice")
    assert _upload(client, headers, jpeg_bytes(color=(10, 200, 30))).status_code == 200
    return user_id, headers


def _check_hostile_upload(app, client, user_id, headers, name, hostile):
    """Upload ``hostile`` over the user's picture and check everything a hostile upload must leave true."""
    pool = _pool(app)
    before_profile, before_media, mark = _profile(client, user_id), _media(app), pool.decodes

    start = time.monotonic()
    response = _upload(client, headers, hostile.data)
    elapsed = time.monotonic() - start

    assert elapsed < ANSWER_WITHIN, f"{name}: {elapsed:.2f} s"
    assert response.is_json and set(response.json) == {"error", "details"} or response.status_code == 200, name
    budget_kb = app.config["DECODE_MEMORY_MB"] * 1024
    reports = pool.reports_since(mark)
    assert len(reports) == 1 and reports[0].peak_rss_kb < budget_kb, (name, reports)
    if response.status_code == 200 and hostile.expect == "any":
        for url in (response.json["profile_picture_url"], response.json["profile_picture_thumbnail_url"]):
            stored = _stored_file(client, url)
            assert stored[:3] == b"\xff\xd8\xff" and not any(s in stored for s in STOWAWAYS), name
        return
    assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.json}"
    assert response.json["details"] == {"image": [response.json["error"]]}
    assert _profile(client, user_id) == before_profile, name
    assert _media(app) == before_media, name


@pytest.mark.parametrize("name", CORPUS)
def test_a_hostile_upload_answers_quickly_within_budget_and_changes_nothing(app, client, pictured_user, name):
    user_id, headers = pictured_user

    _check_hostile_upload(app, client, user_id, headers, name, CORPUS[name])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WebP", "HEIC"])
def test_seeded_mutations_of_valid_images_answer_2xx_or_4xx_within_budget(app, client, pictured_user, fmt):
    user_id, headers = pictured_user

    for number, hostile in enumerate(MUTATIONS):
        if hostile.kind == f"mutated {fmt}":
            _check_hostile_upload(app, client, user_id, headers, f"{hostile.kind} #{number}", hostile)


def test_hostile_flyer_images_create_no_flyer_and_store_nothing(app, client, register):
    user_id, headers = register("alice")
    refused = [hostile for hostile in CORPUS.values() if hostile.expect == "4xx"]

    answers = [_post(client, "/api/v1/flyers", headers, {
        **FLYER_FIELDS, "image_1": FileStorage(io.BytesIO(jpeg_bytes()), "a.jpg", "image/jpeg"),
        "image_2": FileStorage(io.BytesIO(hostile.data), "b.jpg", "image/jpeg")}) for hostile in refused]

    assert {answer.status_code for answer in answers} == {400}
    assert all(set(answer.json["details"]) == {"image_2"} for answer in answers)
    assert client.get(f"/api/v1/users/{user_id}/flyers").json["count"] == 0
    assert _media(app) == {}


def test_the_valid_picture_is_still_accepted(client, pictured_user):
    user_id, headers = pictured_user

    response = _upload(client, headers, jpeg_bytes(color=(200, 10, 10)))

    assert response.status_code == 200


@pytest.fixture
def uncapped_scans(app_config):
    """The scan-count check lifted, so a scan bomb reaches a decoder and meets its deadline."""
    app_config["DECODE_MAX_SCANS"] = 10**6
    return app_config


def test_a_decode_past_its_deadline_is_killed_and_answers_400_within_2_s(uncapped_scans, app, client, pictured_user):
    user_id, headers = pictured_user
    before = _profile(client, user_id)

    start = time.monotonic()
    response = _upload(client, headers, scan_bomb(3000))
    elapsed = time.monotonic() - start

    assert response.status_code == 400 and elapsed < ANSWER_WITHIN
    assert response.json["error"] == "image takes too long to decode (limit 1.5 s)"
    assert _pool(app).reports[-1].outcome == "timeout"
    assert _profile(client, user_id) == before


def test_the_decoder_killed_at_its_deadline_is_replaced(uncapped_scans, app, client, pictured_user):
    _, headers = pictured_user
    _upload(client, headers, scan_bomb(3000))

    response = _upload(client, headers, jpeg_bytes(color=(1, 2, 3)))

    assert response.status_code == 200


@pytest.fixture
def small_budget(app_config):
    """A decoder budget below what the 40 MP PNG needs (~340 MB), above what Pillow's import takes."""
    app_config["DECODE_MEMORY_MB"] = 200
    return app_config


def test_a_decode_over_the_memory_budget_answers_400_and_the_next_one_works(small_budget, app, client, pictured_user):
    user_id, headers = pictured_user
    before = _profile(client, user_id)

    refused = _upload(client, headers, CORPUS["PNG IDAT 40 MP RGBA (under the cap)"].data)
    unchanged = _profile(client, user_id)
    after = _upload(client, headers, jpeg_bytes(color=(1, 2, 3)))

    assert refused.status_code == 400 and refused.json["error"] == "image needs too much memory to decode"
    assert unchanged == before and after.status_code == 200


@pytest.fixture
def one_decoder(app_config):
    app_config.update(DECODE_WORKERS=1, DECODE_QUEUE=0, DECODE_MAX_SCANS=10**6)
    return app_config


def test_a_full_pool_answers_503_json_with_retry_after(one_decoder, app, client, pictured_user):
    _, headers = pictured_user
    pool = _pool(app)
    bomb = threading.Thread(target=_upload, args=(app.test_client(), headers, scan_bomb(3000)))
    bomb.start()
    deadline = time.monotonic() + 5
    while pool.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)

    response = _upload(client, headers, jpeg_bytes())
    bomb.join()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.json == {"error": "too many pictures are being processed, try again shortly",
                             "details": {"image": ["too many pictures are being processed, try again shortly"]}}


def test_an_upload_with_a_huge_exif_block_writes_at_most_one_log_line(app, client, pictured_user, caplog, capfd):
    _, headers = pictured_user
    caplog.set_level("DEBUG")

    response = _upload(client, headers, CORPUS["JPEG with 5000 broken EXIF tags"].data)

    assert response.status_code == 200
    out, err = capfd.readouterr()
    assert len(caplog.records) <= 1 and len((out + err).splitlines()) <= 1


# --- under gunicorn --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
GUNICORN_PORTS = {"scan check on": 7210, "scan check lifted": 7211}  # this branch's loopback range: 7200-7299
READER_P99_MS = 100.0


def _children(pid):
    """PIDs whose parent is ``pid`` (gunicorn's workers; their decoders are the workers' children)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.add(int(status.parent.name))
    return found


def _request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()


@pytest.fixture(params=list(GUNICORN_PORTS))
def gunicorn_server(request, tmp_path):
    """gunicorn (2 workers x 4 threads) on SQLite and the embedded fake Redis; yields ``(port, master pid)``."""
    import os
    import secrets
    import signal
    import subprocess
    import sys
    port = GUNICORN_PORTS[request.param]
    env = {name: value for name, value in os.environ.items()
           if name not in ("REDIS_URL", "PUBLIC_BASE_URL", "DATABASE_URL", "MEDIA_ROOT")}
    env.update(FLASK_APP="wsgi", DATABASE_URL=f"sqlite:///{tmp_path / 'hostile.db'}",
               MEDIA_ROOT=str(tmp_path / "media"), RATE_LIMIT_ENABLED="false", SECRET_KEY=secrets.token_hex(20))
    if request.param == "scan check lifted":  # the bombs reach the decoders and meet their deadline
        env["DECODE_MAX_SCANS"] = str(10**6)
    subprocess.run([sys.executable, "-m", "flask", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4", "--bind", f"127.0.0.1:{port}",
         "--timeout", "30", "wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        _wait_until_ready(server, port)
        yield port, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # our own session: this master and its workers only
            server.wait()
        log.close()


def _wait_until_ready(server, port):
    import http.client
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, "gunicorn exited"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            if _request(conn, "GET", "/healthz")[0] == 200 and len(_children(server.pid)) == 2:
                time.sleep(1.0)  # the workers' decoders import Pillow in the background
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise AssertionError("gunicorn did not answer /healthz within 60 s")


def _multipart(data):
    boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(data), "photo.jpg", "image/jpeg")})
    return body, f"multipart/form-data; boundary={boundary}"


def test_three_scan_bombs_at_once_neither_kill_a_worker_nor_slow_a_reader(gunicorn_server):
    import http.client
    import json
    port, master = gunicorn_server
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as setup:
        status, _, body = _request(setup, "POST", "/api/v1/auth/register", json.dumps(
            {"email": "alice@example.com", "password": "password123", "username": "alice"}),
            {"Content-Type": "application/json"})
        assert status == 201
        token, user_id = json.loads(body)["token"], json.loads(body)["user_id"]
        auth = {"Authorization": f"Bearer {token}"}
        picture, content_type = _multipart(jpeg_bytes())
        assert _request(setup, "POST", PICTURE, picture, {**auth, "Content-Type": content_type})[0] == 200
        profile = _request(setup, "GET", f"/api/v1/users/{user_id}/profile")[2]
    workers = _children(master)
    bomb_body, bomb_type = _multipart(scan_bomb(3000))
    answers, reads, stop = [], [], threading.Event()

    def read():
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
            while not stop.is_set():
                start = time.perf_counter()
                status, _, body = _request(conn, "GET", f"/api/v1/users/{user_id}/profile")
                reads.append(((time.perf_counter() - start) * 1000, status, body))

    def bomb():
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=30)) as conn:
            start = time.monotonic()
            status, kind, body = _request(conn, "POST", PICTURE, bomb_body, {**auth, "Content-Type": bomb_type})
            answers.append((status, kind, json.loads(body), time.monotonic() - start))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    bombs = [threading.Thread(target=bomb) for _ in range(3)]
    for thread in bombs:
        thread.start()
    for thread in bombs:
        thread.join()
    time.sleep(0.3)
    stop.set()
    reader.join()

    latencies = sorted(latency for latency, _, _ in reads)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    # A bomb that finds its worker's decoders busy for longer than DECODE_WAIT_SECONDS answers 503 instead.
    assert {(status, kind) for status, kind, _, _ in answers} <= {(400, "application/json"), (503, "application/json")}
    assert all(elapsed < ANSWER_WITHIN for _, _, _, elapsed in answers), answers
    assert {(status, body) for _, status, body in reads} == {(200, profile)}
    assert p99 < READER_P99_MS, f"reader p99 {p99:.1f} ms over {len(latencies)} reads"
    assert _children(master) == workers
