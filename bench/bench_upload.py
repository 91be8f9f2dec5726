"""Time a whole profile picture upload, HTTP request to answer, against the service under gunicorn.

    .venv/bin/python bench/bench_upload.py            # 20 uploads per case
    .venv/bin/python bench/bench_upload.py --quick    # 3 uploads per case, for a CI smoke test

Starts gunicorn (gthread workers, so the client keeps one connection alive) on a free loopback
port with a fresh SQLite database and media folder in a temporary directory, registers a user,
then uploads camera-like JPEGs over that connection. Each case alternates two versions of its
image, so every upload writes new files and deletes the previous ones, as a real replacement
does. The same inputs then go through ``process_profile_picture`` in this process: the
difference between the two medians is what HTTP, multipart parsing, storage and the database add.
They also go through a decoder pool in this process (service/decoder.py): the difference to the
pipeline is the hop to the decoder process (the copy of the bytes both ways, the header checks).
``DECODE_WORKERS=0`` in the environment makes the server decode in its workers, as before the pool.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.decoder import DecoderPool, DecoderSettings  # noqa: E402
from service.pictures import process_profile_picture  # noqa: E402
from tests.images import photo_jpeg  # noqa: E402

PICTURE = "/api/v1/users/me/profile/picture"
START_TIMEOUT = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed uploads per case (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 uploads per case, for a CI smoke test")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (default 4)")
    parser.add_argument("--port", type=int, default=0, help="loopback port for gunicorn (default: a free one)")
    args = parser.parse_args()
    runs = 3 if args.quick else max(1, args.runs)
    # A SIGTERM to the bench must still stop gunicorn: turn it into an exception the finally clauses see.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cases = [
        ("12 MP ~2 MB", [photo_jpeg((4000, 3000), quality=90), photo_jpeg((4000, 3000), quality=89)]),
        ("3 MP ~500 KB", [photo_jpeg((2000, 1500), quality=90), photo_jpeg((2000, 1500), quality=89)]),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as workdir, \
            _gunicorn(Path(workdir), args.workers, args.threads, args.port) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            token = _register(conn)
            http_times = {name: _time_uploads(conn, token, images, runs) for name, images in cases}
        finally:
            conn.close()
    pipeline_times = {name: _time_pipeline(images, runs) for name, images in cases}
    pool = DecoderPool(DecoderSettings())
    through_pool = lambda data: pool.run(process_profile_picture, data, max_bytes=5 * 2**20)  # noqa: E731
    try:
        pool_times = {name: _times(through_pool, images, runs) for name, images in cases}
        cpu = {name: (_cpu_ms(process_profile_picture, images, 3 * runs, lambda: 0.0),
                      _cpu_ms(through_pool, images, 3 * runs, pool.cpu_seconds)) for name, images in cases}
    finally:
        pool.close()

    decoders = os.environ.get("DECODE_WORKERS", "2")
    print(f"profile picture upload under gunicorn ({args.workers} workers x {args.threads} threads, SQLite, "
          f"local disk, DECODE_WORKERS={decoders}), {runs} uploads per case over one keep-alive connection, "
          f"times in ms")
    header = (f"{'case':<15}{'input KB':>9}{'HTTP med':>10}{'p95':>8}{'pipeline med':>14}{'p95':>8}"
              f"{'HTTP - pipeline':>17}{'pool med':>10}{'p95':>8}{'reconnects':>12}")
    print(header)
    print("-" * len(header))
    for name, images in cases:
        samples, reconnects = http_times[name]
        pipeline = pipeline_times[name]
        size = statistics.mean(len(image) for image in images) / 1024
        print(f"{name:<15}{size:>9.0f}{statistics.median(samples):>10.1f}{_p95(samples):>8.1f}"
              f"{statistics.median(pipeline):>14.1f}{_p95(pipeline):>8.1f}"
              f"{statistics.median(samples) - statistics.median(pipeline):>17.1f}"
              f"{statistics.median(pool_times[name]):>10.1f}{_p95(pool_times[name]):>8.1f}{reconnects:>12}")
    print("CPU per picture (this process plus its decoders, which wall times on a busy machine hide), ms:")
    for name, (inline, pooled) in cpu.items():
        print(f"  {name:<15} in process {inline:6.1f}   through the pool {pooled:6.1f}   "
              f"hop {pooled - inline:+5.1f} ({(pooled / inline - 1) * 100:+.0f}%)")
    return 0


def _cpu_ms(function: Callable[[bytes], object], images: list[bytes], runs: int,
            children: Callable[[], float]) -> float:
    """Mean CPU milliseconds of one call: this process's time plus what ``children()`` adds meanwhile."""
    for image in images:
        function(image)
    start, start_children = time.process_time(), children()
    for run in range(runs):
        function(images[run % len(images)])
    return (time.process_time() - start + children() - start_children) * 1000 / runs


@contextmanager
def _gunicorn(workdir: Path, workers: int, threads: int, port: int = 0) -> Iterator[int]:
    """Migrate a fresh database, run gunicorn on a free loopback port until the block ends, yield the port."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("REDIS_URL", "PUBLIC_BASE_URL", "DATABASE_URL", "MEDIA_ROOT")}
    env.update({
        "FLASK_APP": "wsgi",
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "MEDIA_ROOT": str(workdir / "media"),
        "RATE_LIMIT_ENABLED": "false",
        "SECRET_KEY": secrets.token_hex(20),  # 40 characters
    })
    subprocess.run([sys.executable, "-m", "flask", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = port or _free_port()
    log = open(workdir / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(threads),
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_ready(server, port, workdir / "gunicorn.log")
        yield port
    finally:
        server.terminate()  # SIGTERM to the master: it stops its workers gracefully
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # our own session: the master and its workers only
            server.wait()
        log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_ready(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}:\n{log.read_text(errors='replace')}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer /healthz within {START_TIMEOUT:g} s")


def _register(conn: http.client.HTTPConnection) -> str:
    body = json.dumps({"email": "bench@example.com", "password": "bench-password", "username": "bench"})
    conn.request("POST", "/api/v1/auth/register", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 201:
        raise RuntimeError(f"register answered {response.status}: {answer[:200]!r}")
    return json.loads(answer)["token"]


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _upload(conn: http.client.HTTPConnection, token: str, body: bytes, content_type: str) -> None:
    conn.request("POST", PICTURE, body=body,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200 or not json.loads(answer)["profile_picture_url"]:
        raise RuntimeError(f"upload answered {response.status}: {answer[:200]!r}")


def _time_uploads(conn: http.client.HTTPConnection, token: str, images: list[bytes],
                  runs: int) -> tuple[list[float], int]:
    """Upload the images in turn, ``runs`` times after one untimed round; return times and reconnects."""
    bodies = [_multipart(image) for image in images]
    for body, content_type in bodies:  # warm-up: worker imports, Pillow plugins, the first files
        _upload(conn, token, body, content_type)
    samples, reconnects = [], 0
    for run in range(runs):
        body, content_type = bodies[run % len(bodies)]
        sock = conn.sock
        start = time.perf_counter()
        _upload(conn, token, body, content_type)
        samples.append((time.perf_counter() - start) * 1000)
        reconnects += sock is None or conn.sock is not sock
    return sorted(samples), reconnects


def _time_pipeline(images: list[bytes], runs: int) -> list[float]:
    return _times(process_profile_picture, images, runs)


def _times(function: Callable[[bytes], object], images: list[bytes], runs: int) -> list[float]:
    for image in images:
        function(image)  # warm-up, as for the uploads
    samples = []
    for run in range(runs):
        start = time.perf_counter()
        function(images[run % len(images)])
        samples.append((time.perf_counter() - start) * 1000)
    return sorted(samples)


def _p95(samples: list[float]) -> float:
    return samples[max(0, math.ceil(0.95 * len(samples)) - 1)]


if __name__ == "__main__":
    sys.exit(main())
