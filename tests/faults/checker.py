"""Read-after-write checker: writes through one instance, reads through others, counts stale reads.

A *subject* is one thing that is written and read back: a profile (PATCH its ``bio`` to
``"v<k>"``, read ``GET /users/<id>/profile``) or a creator's page (PATCH a flyer's ``title`` to
``"t<k>"``, read ``GET /users/<id>/flyers``). Writes are numbered ``k = 0, 1, 2, ...`` and made
one at a time; each records when its answer arrived. Reader threads loop over the subjects on
their instance and record when each read started and which ``k`` it showed.

A read is *stale* when it started after write ``k`` answered yet shows a value older than
``k``; its staleness is how long before the read the first newer write had answered. 5xx
answers, answers that are not the expected JSON, and connection errors are counted apart.
Everything is judged after the run, against the complete record of writes.
"""
from __future__ import annotations

import bisect
import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

TIMEOUT = 5.0
"""Seconds a single request may take; a slower answer counts as a connection error."""


class Http:
    """A keep-alive HTTP client for one base URL (reconnects when the server closes)."""

    def __init__(self, base_url: str, timeout: float = TIMEOUT) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._conn.request(method, path, body=body, headers=headers or {})
            response = self._conn.getresponse()
            data = response.read()
            if response.will_close:
                self.close()
            return response.status, data, {k.lower(): v for k, v in response.getheaders()}
        except BaseException:
            self.close()
            raise

    def json(self, method: str, path: str, payload: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, data, _ = self.request(method, path, json.dumps(payload).encode() if payload is not None else None,
                                       headers)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, None

    def multipart(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes, str]],
                  token: str) -> tuple[int, Any]:
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, (filename, content, mimetype) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f'Content-Type: {mimetype}\r\n\r\n'.encode() + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, data, _ = self.request("POST", path, b"".join(parts), {
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {token}"})
        try:
            return status, json.loads(data)
        except ValueError:
            return status, None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class Subject:
    """Something written as ``k`` through ``write_path`` and read back through ``read_path``."""

    name: str
    write_path: str
    write_body: Callable[[int], dict[str, Any]]
    read_path: str
    extract: Callable[[Any], int | None]
    """The ``k`` a read's JSON body shows, or None if the body is not what was expected."""


def profile_subject(user_id: int) -> Subject:
    def extract(body: Any) -> int | None:
        bio = body.get("bio") if isinstance(body, dict) else None
        return int(bio[1:]) if isinstance(bio, str) and bio[:1] == "v" and bio[1:].isdigit() else None
    return Subject("profile", "/api/v1/users/me/profile", lambda k: {"bio": f"v{k}"},
                   f"/api/v1/users/{user_id}/profile", extract)


def page_subject(user_id: int, flyer_id: int) -> Subject:
    def extract(body: Any) -> int | None:
        results = body.get("results") if isinstance(body, dict) else None
        for flyer in results or ():
            title = flyer.get("title") if isinstance(flyer, dict) else None
            if flyer.get("id") == flyer_id and isinstance(title, str) and title[:1] == "t" and title[1:].isdigit():
                return int(title[1:])
        return None
    return Subject("page", f"/api/v1/flyers/{flyer_id}", lambda k: {"title": f"t{k}"},
                   f"/api/v1/users/{user_id}/flyers", extract)


@dataclass
class Write:
    subject: str
    k: int
    sent: float
    answered: float | None = None  # None: no answer (connection error)
    status: int | None = None


@dataclass
class Read:
    subject: str
    target: str
    started: float
    ended: float
    status: int | None  # None: connection error or timeout
    value: int | None   # the k shown; None if the body was not the expected JSON
    detail: str = ""


@dataclass
class Result:
    """What a run saw. ``checked``: 200 reads whose value could be judged."""

    reads: int = 0
    checked: int = 0
    stale: int = 0
    max_staleness: float = 0.0
    status_5xx: int = 0
    non_json: int = 0
    other_status: int = 0
    conn_errors: int = 0
    writes: int = 0
    writes_answered: int = 0
    write_5xx: int = 0
    write_errors: int = 0
    stale_by_target: dict[str, int] = field(default_factory=dict)
    checked_by_target: dict[str, int] = field(default_factory=dict)
    conn_errors_by_target: dict[str, int] = field(default_factory=dict)
    first_stale: str = ""
    details: list[str] = field(default_factory=list)

    def summary(self) -> str:
        by_target = ", ".join(f"{t}: {self.stale_by_target.get(t, 0)}/{n}" for t, n in sorted(self.checked_by_target.items()))
        text = (f"reads checked {self.checked} (of {self.reads}), stale {self.stale} "
                f"(max staleness {self.max_staleness * 1000:.0f} ms; stale/checked per target: {by_target}), "
                f"5xx {self.status_5xx + self.write_5xx} (writes {self.write_5xx}), non-JSON {self.non_json}, "
                f"other status {self.other_status}, connection errors {self.conn_errors} "
                f"{dict(sorted(self.conn_errors_by_target.items()))}, "
                f"writes {self.writes_answered}/{self.writes} answered (errors {self.write_errors})")
        if self.first_stale:
            text += f"; first stale read: {self.first_stale}"
        if self.details:
            text += "; e.g. " + " | ".join(self.details[:3])
        return text

    def answer_problems(self) -> list[str]:
        """What the answers broke: stale reads, 5xx, answers neither expected nor JSON."""
        problems = []
        if self.stale:
            problems.append(f"{self.stale} stale reads")
        if self.status_5xx or self.write_5xx:
            problems.append(f"{self.status_5xx + self.write_5xx} 5xx answers")
        if self.non_json or self.other_status:
            problems.append(f"{self.non_json + self.other_status} unexpected answers")
        return problems


class Checker:
    """Writes through `writer_url`, reads through `reader_urls` (one thread each), judges afterwards.

    ``reader_urls`` maps a target name (e.g. "A", "B") to a base URL; ``readers`` lists the
    target of each reader thread (e.g. "BBBA": three threads on B, one on A).
    """

    def __init__(self, writer_url: str, token: str, subjects: list[Subject], reader_urls: dict[str, str],
                 readers: str = "BBBA", read_pause: float = 0.004, max_duration: float = 60.0) -> None:
        self.writer_url, self.token = writer_url, token
        self.subjects = subjects
        self.reader_urls = reader_urls
        self.readers = readers
        self.read_pause = read_pause
        self.max_duration = max_duration
        self.writes: list[Write] = []
        self.reads: list[Read] = []
        self._k = 0
        self._write_lock = threading.Lock()
        self._reads_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_writer = threading.Event()
        self._answers = threading.Condition()
        self._answer_seq = 0
        self._last_written: Subject | None = None
        self._held: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._writer_thread: threading.Thread | None = None
        self._writer_http = Http(writer_url)
        self._started = 0.0

    # writing
    def write(self, only: str | None = None) -> int:
        """Write the next k to every subject (one request each, in order), or to subject `only`; return k."""
        with self._write_lock:
            k = self._k
            self._k += 1
            for subject in self.subjects:
                if only is not None and subject.name != only:
                    continue
                record = Write(subject.name, k, time.monotonic())
                try:
                    status, _ = self._writer_http.json("PATCH", subject.write_path, subject.write_body(k), self.token)
                except (OSError, http.client.HTTPException):
                    status = None
                record.status = status
                if status is not None:
                    record.answered = time.monotonic()
                self.writes.append(record)
                with self._answers:  # wake the readers: a read right after an answer is the sharpest test
                    self._answer_seq += 1
                    self._last_written = subject
                    self._answers.notify_all()
            return k

    def start_writer(self, interval: float = 0.1) -> None:
        """Write every `interval` seconds in a thread until `stop_writer`."""
        self.stop_writer()
        self._stop_writer.clear()

        def loop() -> None:
            while not self._stop_writer.is_set() and not self._stop.is_set():
                self.write()
                self._stop_writer.wait(interval)

        self._writer_thread = threading.Thread(target=loop, daemon=True, name="checker-writer")
        self._writer_thread.start()

    def stop_writer(self) -> None:
        if self._writer_thread is not None:
            self._stop_writer.set()
            self._writer_thread.join(timeout=2 * TIMEOUT * len(self.subjects) + 1)
            self._writer_thread = None

    # reading
    def start(self) -> "Checker":
        """Write k=0 everywhere (it must answer 200), then start the readers."""
        self._started = time.monotonic()
        self.write()
        failed = [w for w in self.writes if w.status != 200]
        assert not failed, f"the first writes failed: {failed}"
        for index, target in enumerate(self.readers):
            thread = threading.Thread(target=self._read_loop, args=(target, index), daemon=True,
                                      name=f"checker-reader-{target}{index}")
            thread.start()
            self._threads.append(thread)
        return self

    def hold(self, targets: str) -> None:
        """Stop the readers of `targets` (e.g. "B") after their current read, until `release`."""
        with self._answers:
            self._held = set(targets)
            self._answers.notify_all()

    def release(self) -> None:
        with self._answers:
            self._held = set()
            self._answers.notify_all()

    def _next_subject(self, target: str, seen: int, n: int) -> tuple[Subject, int]:
        """Wait `read_pause` (or while held), cut short by a write's answer: then read what it wrote."""
        with self._answers:
            deadline = time.monotonic() + self.read_pause
            while not self._stop.is_set():
                if target not in self._held:
                    if self._answer_seq != seen and self._last_written is not None:
                        return self._last_written, self._answer_seq
                    if time.monotonic() >= deadline:
                        break
                self._answers.wait(max(0.0, deadline - time.monotonic()) if target not in self._held else 0.1)
            return self.subjects[n % len(self.subjects)], self._answer_seq

    def _read_loop(self, target: str, index: int) -> None:
        client = Http(self.reader_urls[target])
        n = index
        seen = 0
        try:
            while not self._stop.is_set() and time.monotonic() - self._started < self.max_duration:
                subject, seen = self._next_subject(target, seen, n)
                n += 1
                started = time.monotonic()
                status: int | None
                value: int | None = None
                detail = ""
                try:
                    status, data, _ = client.request("GET", subject.read_path)
                except (OSError, http.client.HTTPException) as error:
                    status, detail = None, repr(error)
                else:
                    try:
                        value = subject.extract(json.loads(data))
                    except ValueError:
                        value = None
                    if value is None:
                        detail = data[:200].decode("utf-8", "replace")
                ended = time.monotonic()
                with self._reads_lock:
                    self.reads.append(Read(subject.name, target, started, ended, status, value, detail))
        finally:
            client.close()

    def stop(self) -> Result:
        self.stop_writer()
        with self._answers:
            self._stop.set()
            self._answers.notify_all()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT + 2)
        self._writer_http.close()
        return self.result()

    def __enter__(self) -> "Checker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def last_answered(self) -> float:
        """When the latest answered write answered (monotonic)."""
        return max((w.answered for w in self.writes if w.answered is not None), default=0.0)

    # judging
    def result(self, since: float = 0.0) -> Result:
        """Judge every read (or only those started at or after `since`, a monotonic time)."""
        result = Result()
        answered: dict[str, tuple[list[float], list[int]]] = {}
        for subject in self.subjects:
            ok = sorted((w.answered, w.k) for w in self.writes
                        if w.subject == subject.name and w.status == 200 and w.answered is not None)
            answered[subject.name] = ([a for a, _ in ok], [k for _, k in ok])
        for w in self.writes:
            result.writes += 1
            if w.status is None:
                result.write_errors += 1
            elif w.status >= 500:
                result.write_5xx += 1
            elif w.status == 200:
                result.writes_answered += 1
        with self._reads_lock:
            reads = [r for r in self.reads if r.started >= since]
        for read in reads:
            result.reads += 1
            if read.status is None:
                result.conn_errors += 1
                result.conn_errors_by_target[read.target] = result.conn_errors_by_target.get(read.target, 0) + 1
                if len(result.details) < 5:
                    result.details.append(f"{read.target} connection error {read.detail}")
                continue
            if read.status >= 500:
                result.status_5xx += 1
                if len(result.details) < 5:
                    result.details.append(f"{read.target} {read.status} {read.detail[:120]}")
                continue
            if read.status != 200:
                result.other_status += 1
                if len(result.details) < 5:
                    result.details.append(f"{read.target} {read.status} {read.detail[:120]}")
                continue
            if read.value is None:
                result.non_json += 1
                if len(result.details) < 5:
                    result.details.append(f"{read.target} unexpected body {read.detail[:120]}")
                continue
            result.checked += 1
            result.checked_by_target[read.target] = result.checked_by_target.get(read.target, 0) + 1
            times, ks = answered[read.subject]
            position = bisect.bisect_right(times, read.started)  # writes answered before the read started
            if position == 0:
                continue
            required = max(ks[:position])
            if read.value >= required:
                continue
            result.stale += 1
            result.stale_by_target[read.target] = result.stale_by_target.get(read.target, 0) + 1
            newer = [t for t, k in zip(times[:position], ks[:position]) if k > read.value]
            staleness = read.started - min(newer)
            result.max_staleness = max(result.max_staleness, staleness)
            if not result.first_stale:
                result.first_stale = (f"{read.subject} on {read.target} at +{read.started - self._started:.2f} s "
                                      f"showed k={read.value}, k={required} had answered "
                                      f"{staleness * 1000:.0f} ms before")
        return result
