"""The edge through real gunicorn with the project's gunicorn.conf.py: every refusal is JSON, whoever makes it."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.tdd_green

ROOT = Path(__file__).resolve().parent.parent
PORTS = range(7310, 7380)


def _free_port():
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for gunicorn")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """gunicorn run from the project root (so it loads ./gunicorn.conf.py), SQLite, embedded cache."""
    workdir = tmp_path_factory.mktemp("gunicorn")
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "PUBLIC_BASE_URL")}
    env.update(DATABASE_URL=f"sqlite:///{workdir}/db.sqlite", MEDIA_ROOT=str(workdir / "media"),
               RATE_LIMIT_ENABLED="false", TRUSTED_HOSTS="localhost,127.0.0.1",
               PASSWORD_HASH_METHOD="pbkdf2:sha256:1000")
    log = open(workdir / "gunicorn.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", f"127.0.0.1:{port}",
                                "wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while _status(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "gunicorn.log").read_text(errors="replace"))
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _exchange(port, request):
    """Send ``request``, return (status, headers, body) of the answer; the server may answer before reading it all."""
    def send():
        try:
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before it was all sent: the answer is already on its way

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        sender = threading.Thread(target=send)
        sender.start()
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # the rest of an unread body: the answer came before
        sender.join()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _status(port, request):
    try:
        return _exchange(port, request)[0]
    except (OSError, IndexError, ValueError):
        return None


def _get(path, *headers):
    return b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def _assert_json(answer, status):
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json")
    assert isinstance(json.loads(body)["error"], str)


def test_an_ordinary_request_is_served(server):
    status, headers, body = _exchange(server, _get(b"/healthz", *(b"X-H%d: " % n + b"a" * 8000 for n in range(90))))

    assert status == 200
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("size", [8200, 100_000, 1_000_000])
def test_a_large_header_is_431_json(server, size):
    _assert_json(_exchange(server, _get(b"/api/v1/users/1/profile", b"X-Big: " + b"a" * size)), 431)


def test_too_many_header_fields_are_431_json(server):
    _assert_json(_exchange(server, _get(b"/healthz", *(b"X-H%d: 1" % n for n in range(150)))), 431)


def test_a_5_kb_uri_is_414_json_from_the_application(server):
    _assert_json(_exchange(server, _get(b"/api/v1/users/1/profile?x=" + b"a" * 5000)), 414)


@pytest.mark.parametrize("size", [9_000, 1_000_000])
def test_a_uri_past_gunicorns_line_limit_is_414_json(server, size):
    _assert_json(_exchange(server, _get(b"/api/v1/users/1/profile?x=" + b"a" * size)), 414)


@pytest.mark.parametrize("request_line", [b"GARBAGE", b"GET /healthz HTTP/9.9", b"GET  /healthz HTTP/1.1",
                                          b"G\x00T /healthz HTTP/1.1"])
def test_a_malformed_request_is_4xx_json_from_gunicorn(server, request_line):
    status, headers, body = _exchange(server, request_line + b"\r\nHost: localhost\r\n\r\n")

    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]


def test_a_chunked_json_body_over_64_kb_is_413_json(server):
    body = b'{"email": "a@example.com", "password": "password123"' + b" " * 200_000 + b"}"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192]) for i in range(0, len(body), 8192))
    request = (b"POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")

    _assert_json(_exchange(server, request), 413)


def test_a_10_mb_json_body_is_413_json(server):
    request = (b"POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Content-Length: 10000000\r\n\r\n" + b" " * 10_000_000)

    _assert_json(_exchange(server, request), 413)


def test_an_untrusted_host_is_400_json(server):
    _assert_json(_exchange(server, b"GET /api/v1/users/1/profile HTTP/1.1\r\nHost: evil.example\r\n\r\n"), 400)


def test_an_id_no_column_can_hold_is_404_json(server):
    _assert_json(_exchange(server, _get(b"/api/v1/users/2147483648/profile")), 404)
