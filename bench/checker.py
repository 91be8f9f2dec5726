"""Read-your-writes checker that runs beside the mixed workload.

For its own users (the load writes other users, so nothing else changes these), in a loop:
PATCH the bio to a unique value, then read the profile at once on another connection, and
again on the writer's connection with If-None-Match set to the ETag from before the write
(a 304 there would be a stale answer too). Every fourth round it also creates a flyer and
reads the creator's first page (the new flyer must be first: newest first) and the profile
(flyer_count must have grown by one). Every read that misses the write is a stale answer.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from bench.seed import BENCH_TITLE


@dataclass
class CheckerUser:
    user_id: int
    token: str
    flyers: int = -1  # valid flyers, learnt from the first read


@dataclass
class Tally:
    reads: int = 0
    stale: int = 0
    failures: int = 0  # write or read answers with an unexpected status
    examples: list[str] = field(default_factory=list)

    def stale_answer(self, what: str) -> None:
        self.stale += 1
        if len(self.examples) < 5:
            self.examples.append(what)


class StaleChecker:
    def __init__(self, url: str, users: list[CheckerUser], flyer_body: bytes, flyer_content_type: str,
                 *, threads: int = 2) -> None:
        host, port = url.split("//", 1)[1].split(":")
        self._address = (host, int(port))
        self._users = users
        self._flyer_body = flyer_body
        self._flyer_content_type = flyer_content_type
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.tally = Tally()
        groups = [users[n::threads] for n in range(threads) if users[n::threads]]
        self._threads = [threading.Thread(target=self._loop, args=(g,), daemon=True) for g in groups]

    def __enter__(self) -> StaleChecker:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*self._address, timeout=10)

    def _call(self, conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data

    def _loop(self, users: list[CheckerUser]) -> None:
        writer, reader = self._connection(), self._connection()
        round_number = 0
        while not self._stop.is_set():
            for user in users:
                if self._stop.is_set():
                    break
                try:
                    self._round(writer, reader, user, round_number % 4 == 3)
                except (OSError, http.client.HTTPException, ValueError) as error:
                    with self._lock:
                        self.tally.failures += 1
                        if len(self.tally.examples) < 5:
                            self.tally.examples.append(f"error: {error!r}")
                    time.sleep(0.05)
            round_number += 1
        writer.close()
        reader.close()

    def _round(self, writer: http.client.HTTPConnection, reader: http.client.HTTPConnection,
               user: CheckerUser, with_flyer: bool) -> None:
        auth = {"Authorization": f"Bearer {user.token}"}
        profile_path = f"/api/v1/users/{user.user_id}/profile"
        status, headers, body = self._call(reader, "GET", profile_path)
        self._expect(status, 200, "profile read")
        before_etag = headers.get("etag", "")
        if user.flyers < 0:
            user.flyers = json.loads(body)["flyer_count"]

        bio = f"check {uuid.uuid4().hex[:16]}"
        status, _, body = self._call(writer, "PATCH", "/api/v1/users/me/profile", json.dumps({"bio": bio}).encode(),
                                     {**auth, "Content-Type": "application/json"})
        self._expect(status, 200, "profile write")
        self._check(json.loads(body).get("bio") == bio, f"PATCH answer of user {user.user_id} lacks its bio")
        status, _, body = self._call(reader, "GET", profile_path)
        self._check(status == 200 and json.loads(body).get("bio") == bio,
                    f"GET (other connection) after PATCH of user {user.user_id}: {status} without the new bio")
        status, _, body = self._call(writer, "GET", profile_path, headers={"If-None-Match": before_etag})
        self._check(status == 200 and json.loads(body).get("bio") == bio,
                    f"GET If-None-Match(old ETag) after PATCH of user {user.user_id}: {status}")

        if with_flyer:
            status, _, body = self._call(writer, "POST", "/api/v1/flyers", self._flyer_body,
                                         {**auth, "Content-Type": self._flyer_content_type})
            self._expect(status, 201, "flyer create")
            flyer_id = json.loads(body)["id"]
            user.flyers += 1
            status, _, body = self._call(reader, "GET", f"/api/v1/users/{user.user_id}/flyers?page=1&page_size=20")
            results = json.loads(body).get("results", []) if status == 200 else []
            self._check(bool(results) and results[0]["id"] == flyer_id,
                        f"page 1 of user {user.user_id} after creating flyer {flyer_id} does not start with it")
            status, _, body = self._call(reader, "GET", profile_path)
            count = json.loads(body).get("flyer_count") if status == 200 else None
            self._check(count == user.flyers,
                        f"profile of user {user.user_id} shows flyer_count {count}, want {user.flyers}")

    def _expect(self, status: int, want: int, what: str) -> None:
        if status != want:
            raise ValueError(f"{what}: status {status}, want {want}")

    def _check(self, ok: bool, what: str) -> None:
        with self._lock:
            self.tally.reads += 1
            if not ok:
                self.tally.stale_answer(what)


def flyer_multipart(image: bytes, title: str = BENCH_TITLE + "flyer") -> tuple[bytes, str]:
    """A create-flyer body (title starting with ``bench-``, so the run can delete it) and its content type."""
    boundary = "benchboundary7d1f0a"
    fields = {"title": title, "description": "written by the benchmark", "location_address": "Limmatquai 1, Zurich",
              "lat": "47.37", "lng": "8.54"}
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image_1"; filename="f.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def picture_multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary3c9e21"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode() + image + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"
