"""PostgreSQL stopped in the middle of writes, against gunicorn: every error is JSON, none is committed.

The test owns its processes: a PostgreSQL cluster (initdb as the ``postgres`` user, port 7450) and
gunicorn with two workers (port 7460). Writers send PATCHes and flyer POSTs (each POST with its own
Idempotency-Key) while the cluster is stopped with ``pg_ctl stop -m immediate`` and started again.
Every operation is recorded with its answer; a trigger records every bio the database committed.
The checker then compares the two histories: an answer 2xx must be in the database, an error answer
must not, and retrying the failed POSTs with their keys must create each flyer exactly once.
"""
from __future__ import annotations

import glob
import http.client
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
import pytest
from PIL import Image

pytestmark = pytest.mark.tdd_green

ROOT = Path(__file__).resolve().parent.parent
PG_PORT, PROXY_PORT, APP_PORT = 7450, 7451, 7460
DB_NAME = "writes_fault"
DSN = f"postgresql://postgres@127.0.0.1:{PG_PORT}/{DB_NAME}"
APP_DSN = f"postgresql://postgres@127.0.0.1:{PROXY_PORT}/{DB_NAME}"  # gunicorn reaches PostgreSQL through the proxy
COMMIT = b"COMMIT\x00"  # the simple-query message psycopg sends for commit()
OUTAGES, OUTAGE_SECONDS, BETWEEN_SECONDS = 3, 1.0, 2.0
HTTP_TIMEOUT = 45  # above WRITE_VERIFY_SECONDS and gunicorn's timeout
HISTORY_SQL = """
CREATE TABLE bio_history (user_id integer, bio text);
CREATE FUNCTION record_bio() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO bio_history VALUES (NEW.id, NEW.bio); RETURN NEW; END $$;
CREATE TRIGGER users_bio AFTER UPDATE OF bio ON users FOR EACH ROW EXECUTE FUNCTION record_bio();
-- Deferred triggers run inside COMMIT: a slow one widens the window in which a stop hits a COMMIT.
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER users_slow_commit AFTER UPDATE ON users DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION slow_commit();
CREATE CONSTRAINT TRIGGER flyers_slow_commit AFTER INSERT ON flyers DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


@dataclass
class Op:
    kind: str           # "patch" or "post"
    value: str          # the bio written, or the flyer's Idempotency-Key (also its title)
    status: int | None  # None: no answer (connection lost)
    content_type: str | None
    body: bytes
    retry_after: str | None = None
    token: str = ""


# --- the checker -----------------------------------------------------------------------------

def find_violations(history: list[Op], bios: set[str], titles: list[str]) -> list[str]:
    """Return every disagreement between the answers and what the database committed."""
    problems = []
    for op in history:
        if op.status is None or op.status == 500 or b"<html" in op.body.lower():
            problems.append(f"{op.kind} {op.value}: answered {op.status} {op.body[:80]!r}")
        elif op.status != 204 and (op.content_type or "").split(";")[0] != "application/json":
            problems.append(f"{op.kind} {op.value}: {op.status} answered as {op.content_type}")
        elif op.status == 503 and not (op.retry_after and b'"error"' in op.body):
            problems.append(f"{op.kind} {op.value}: 503 without Retry-After or error message")
        committed = op.value in bios if op.kind == "patch" else op.value in titles
        if op.status in (200, 201) and not committed:
            problems.append(f"{op.kind} {op.value}: answered {op.status} but is not in the database")
        if op.status not in (200, 201) and committed:
            problems.append(f"{op.kind} {op.value}: answered {op.status} but is in the database")
    duplicates = sorted({title for title in titles if titles.count(title) > 1})
    problems += [f"flyer {title} was created more than once" for title in duplicates]
    return problems


def test_the_checker_catches_an_error_answer_whose_write_committed():
    error = b'{"error": "Database unavailable"}'
    history = [Op("patch", "a", 200, "application/json", b"{}"), Op("patch", "b", 503, "application/json", error, "5"),
               Op("post", "k1", 503, "application/json", error, "5")]

    problems = find_violations(history, bios={"a", "b"}, titles=["k1", "k1"])

    assert len(problems) == 3  # b and k1 committed despite their 503, and k1 twice


def test_the_checker_catches_an_html_answer_and_a_lost_acknowledged_write():
    history = [Op("patch", "a", 503, "text/html", b"<html>"), Op("post", "k1", 201, "application/json", b"{}")]

    problems = find_violations(history, bios=set(), titles=[])

    assert len(problems) == 2


# --- the processes ---------------------------------------------------------------------------

class Cluster:
    """A PostgreSQL cluster of this test's own, run as the ``postgres`` OS user."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not binaries:
            pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        self.bin = Path(binaries[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="writes-pg-"))
        self.data = self.root / "data"
        shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True,
                       cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def start(self) -> None:
        options = f"-p {PG_PORT} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "-t", "60",
                  "start")

    def stop_immediately(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            self.stop_immediately()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster()
    try:
        cluster.start()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        yield cluster
    finally:
        cluster.remove()


class CommitCutter:
    """A TCP proxy to PostgreSQL that, when armed, forwards a COMMIT and then loses its answer.

    Toxiproxy's reset_peer, aimed at the worst moment: the server commits, the client's connection
    dies before the answer arrives, and only asking the database again can tell what happened.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", PROXY_PORT))
        self.probability = 0.0
        self.cuts = 0
        self.rng = random.Random(10)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", PG_PORT), timeout=5)
            except OSError:
                client.close()  # PostgreSQL is down: the client sees the refusal as a closed connection
                continue
            upstream.settimeout(None)
            link = {"client": client, "upstream": upstream, "muted": False}
            threading.Thread(target=self._up, args=(link,), daemon=True).start()
            threading.Thread(target=self._down, args=(link,), daemon=True).start()

    def _up(self, link: dict) -> None:
        try:
            while data := link["client"].recv(65536):
                cut = COMMIT in data and self.rng.random() < self.probability
                link["muted"] = link["muted"] or cut  # before forwarding: no answer may slip through
                link["upstream"].sendall(data)
                if cut:
                    self.cuts += 1
                    _hang_up(link["client"])      # the client's COMMIT fails ...
                    time.sleep(0.3)               # ... while the server commits it
                    break
        except OSError:
            pass
        self._close(link)

    def _down(self, link: dict) -> None:
        try:
            while (data := link["upstream"].recv(65536)) and not link["muted"]:
                link["client"].sendall(data)
        except OSError:
            pass
        self._close(link)

    @staticmethod
    def _close(link: dict) -> None:
        _hang_up(link["client"])
        _hang_up(link["upstream"])

    def close(self) -> None:
        self.listener.close()


def _hang_up(end: socket.socket) -> None:
    """Close a socket so the peer sees it at once (shutdown also wakes the other pump's recv)."""
    try:
        end.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    end.close()


@pytest.fixture(scope="module")
def proxy():
    cutter = CommitCutter()
    yield cutter
    cutter.close()


@pytest.fixture(scope="module")
def server(cluster, proxy, tmp_path_factory):
    """gunicorn, two workers, on the cluster; the schema comes from ``flask db upgrade``."""
    env = {**os.environ, "DATABASE_URL": DSN, "RATE_LIMIT_ENABLED": "false", "SECRET_KEY": "x" * 40,
           "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000", "FLASK_APP": "wsgi",
           "MEDIA_ROOT": str(tmp_path_factory.mktemp("media")), "PUBLIC_BASE_URL": f"http://127.0.0.1:{APP_PORT}"}
    env.pop("REDIS_URL", None)  # each worker caches in its own embedded store: the database is under test here
    venv = Path(sys.executable).parent
    subprocess.run([str(venv / "flask"), "db", "upgrade"], cwd=ROOT, env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    env["DATABASE_URL"] = APP_DSN
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(HISTORY_SQL)
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(venv / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{APP_PORT}", "--timeout", "30",
                                    "--no-control-socket", "wsgi:app"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while call("GET", "/healthz")[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield log
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: only the master and its workers
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# --- the clients -----------------------------------------------------------------------------

def call(method: str, path: str, *, token: str | None = None, body: bytes = b"", content_type: str | None = None,
         key: str | None = None) -> tuple[int | None, str | None, bytes, str | None]:
    headers = {"Content-Length": str(len(body))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    if key:
        headers["Idempotency-Key"] = key
    connection = http.client.HTTPConnection("127.0.0.1", APP_PORT, timeout=HTTP_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read(), answer.getheader("Retry-After")
    except (OSError, http.client.HTTPException) as error:
        return None, None, repr(error).encode(), None
    finally:
        connection.close()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 40)).save(out, "JPEG")
    return out.getvalue()


JPEG = _jpeg()


def flyer_form(title: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex  # a new boundary per send, as HTTP clients do: the key must still match
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in (("title", title), ("location_address", "Main St. 1"), ("lat", "47.37"),
                                 ("lng", "8.54"))]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image_1"; filename="a.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + JPEG + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def register(name: str) -> str:
    body = orjson.dumps({"email": f"{name}@example.com", "password": "password123", "username": name})
    status, _, answer, _ = call("POST", "/api/v1/auth/register", body=body, content_type="application/json")
    assert status == 201, answer
    return orjson.loads(answer)["token"]


def patch_writer(token: str, name: str, history: list[Op], stop: threading.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        value = f"{name}-{number}"
        answer = call("PATCH", "/api/v1/users/me/profile", token=token,
                      body=orjson.dumps({"bio": value}), content_type="application/json")
        history.append(Op("patch", value, *answer, token=token))


def post_writer(token: str, history: list[Op], stop: threading.Event) -> None:
    while not stop.is_set():
        key = f"k-{uuid.uuid4().hex}"
        body, content_type = flyer_form(key)
        answer = call("POST", "/api/v1/flyers", token=token, body=body, content_type=content_type, key=key)
        history.append(Op("post", key, *answer, token=token))


def run_writers(prefix: str, during, history: list[Op] | None = None) -> list[Op]:
    """Run two PATCH and two POST writers while ``during()`` runs; return the history."""
    history = [] if history is None else history
    stop = threading.Event()
    threads = [threading.Thread(target=patch_writer, args=(register(f"{prefix}p{n}"), f"{prefix}p{n}", history, stop))
               for n in range(2)]
    threads += [threading.Thread(target=post_writer, args=(register(f"{prefix}f{n}"), history, stop)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        during()
    finally:
        stop.set()
        for thread in threads:
            thread.join(HTTP_TIMEOUT + 15)
    return history


def committed() -> tuple[set[str], list[str]]:
    with psycopg.connect(DSN) as conn:
        bios = {row[0] for row in conn.execute("SELECT bio FROM bio_history")}
        titles = [row[0] for row in conn.execute("SELECT title FROM flyers")]
    return bios, titles


def outages(cluster: Cluster, during_outage=lambda: None) -> None:
    time.sleep(BETWEEN_SECONDS)
    for _ in range(OUTAGES):
        cluster.stop_immediately()
        during_outage()
        time.sleep(OUTAGE_SECONDS)
        cluster.start()
        time.sleep(BETWEEN_SECONDS)


def one_post(token: str, history: list[Op]) -> None:
    """One keyed flyer POST (sent while the database is down, so there is always a failed POST to retry)."""
    key = f"k-{uuid.uuid4().hex}"
    body, content_type = flyer_form(key)
    history.append(Op("post", key, *call("POST", "/api/v1/flyers", token=token, body=body,
                                          content_type=content_type, key=key), token=token))


# --- the tests -------------------------------------------------------------------------------

@dataclass
class Storm:
    history: list[Op]
    bios: set[str]
    titles: list[str]
    retried: dict[str, tuple]    # failed POST key -> the answer to its retry after the restart
    replayed: dict[str, tuple]   # answered POST key -> the answer to its repeat
    titles_after: list[str]


def resend(op: Op, patience: float = 0.0) -> tuple:
    """Send a POST again with its key, as a client does: again after Retry-After on 409/503, for ``patience`` s."""
    deadline = time.monotonic() + patience
    while True:
        body, content_type = flyer_form(op.value)
        answer = call("POST", "/api/v1/flyers", token=op.token, body=body, content_type=content_type, key=op.value)
        if answer[0] not in (409, 503) or time.monotonic() > deadline:
            return answer
        time.sleep(min(float(answer[3] or 1), 1.0))


@pytest.fixture(scope="module")
def storm(cluster, server) -> Storm:
    """Writers through three outages, then the failed POSTs retried and a few answered ones repeated."""
    history: list[Op] = []
    token = register("stormx")
    history = run_writers("storm", lambda: outages(cluster, lambda: one_post(token, history)), history)
    bios, titles = committed()
    posts = [op for op in history if op.kind == "post"]
    retried = {op.value: resend(op, patience=40) for op in posts if op.status != 201}
    replayed = {op.value: resend(op) for op in [op for op in posts if op.status == 201][:5]}
    statuses = [op.status for op in history]
    log = server.read_text()
    landed = log.count("the write is in the database")
    print(f"\nwrites: {len(history)} ({len(posts)} POSTs); answered 2xx: {sum(s in (200, 201) for s in statuses)}, "
          f"503: {statuses.count(503)}, other: {sorted({str(s) for s in statuses} - {'200', '201', '503'})}; "
          f"COMMIT raised: {log.count('commit raised (')} (landed, answered 2xx: {landed}; "
          f"outcome unknown: {log.count('write outcome unknown')})")
    return Storm(history, bios, titles, retried, replayed, committed()[1])


def test_without_faults_every_write_answers_success_and_is_committed(cluster, server):
    history = run_writers("calm", lambda: time.sleep(2.0))

    bios, titles = committed()

    assert find_violations(history, bios, titles) == []
    assert {op.status for op in history} == {200, 201}


def test_postgres_stopped_mid_write_every_error_is_json_and_none_was_committed(storm):
    assert find_violations(storm.history, storm.bios, storm.titles) == []
    assert [op.status for op in storm.history].count(503) > 0  # the outages did hit writes


def test_failed_posts_retried_with_their_keys_after_the_restart_create_each_flyer_once(storm):
    keys = [op.value for op in storm.history if op.kind == "post"]

    assert storm.retried and {answer[0] for answer in storm.retried.values()} == {201}
    assert sorted(title for title in storm.titles_after if title in set(keys)) == sorted(keys)


def test_answered_posts_repeated_with_their_keys_replay_the_first_answer(storm):
    first = {op.value: op.body for op in storm.history if op.value in storm.replayed}

    assert {key: answer[2] for key, answer in storm.replayed.items()} == first


def test_writes_whose_commit_answer_was_lost_answer_success_and_are_committed_once(cluster, server, proxy):
    log_before = server.read_text().count("the write is in the database")
    cuts_before = proxy.cuts
    proxy.probability = 0.3

    def cut_for_a_while() -> None:
        time.sleep(4.0)
        proxy.probability = 0.0

    history = run_writers("cut", cut_for_a_while)
    bios, titles = committed()
    landed = server.read_text().count("the write is in the database") - log_before
    print(f"\nwrites: {len(history)}, COMMIT answers cut: {proxy.cuts - cuts_before}, "
          f"found committed and answered 2xx: {landed}, statuses: {sorted({str(op.status) for op in history})}")

    assert find_violations(history, bios, titles) == []
    assert landed > 0
    # Every cut COMMIT had landed, so every write answered success.
    assert [(op.kind, op.status, op.body) for op in history if op.status not in (200, 201)] == []
