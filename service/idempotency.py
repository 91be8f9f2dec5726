"""``Idempotency-Key`` on authenticated POSTs: the same key answers what its first request answered.

A key is claimed in a transaction of its own before the work starts (a row ``in progress`` with a
lease and a fencing token); the write's own transaction stores the answer in that row (see
``store_answer``), so a stored answer exists exactly when the write does. A repeat finds the row:
stored answer -> replayed; different request -> 422; still running -> 409; in progress past its
lease (the worker died) -> the repeat takes the key over, and the token keeps the old attempt, should
it still be alive, from committing. A failed attempt releases its key so the retry runs it again.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import orjson
from flask import Response, current_app, request
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cache.entries import make_etag
from models import IdempotencyRecord, db
from service.commits import safe_rollback
from service.errors import APIError, BadRequest, Conflict
from service.extension import services
from service.representations import encode

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEY = re.compile(r"[\x21-\x7e]{1,255}")  # 1-255 visible ASCII characters
STORED_HEADERS = ("Location", "ETag", "Cache-Control")
CLAIM_ATTEMPTS = 3
_RELEASER_LOCK = threading.Lock()


@dataclass(frozen=True)
class Answer:
    """A write's answer, built inside its transaction so it can be stored with it."""

    status: int
    data: object
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return encode(self.data)

    def response(self) -> Response:
        body = self.body()
        headers = {"ETag": f'"{make_etag(body)}"', "Cache-Control": "no-cache", **self.headers}
        return Response(body, status=self.status, headers=headers, mimetype="application/json")


@dataclass(frozen=True)
class Claim:
    """This request's hold on a key: the row (user and key) and the token that fences it."""

    user_id: int
    key: str
    token: str

    def row(self):
        """The SQL condition for this attempt's row while it is still in progress."""
        return ((IdempotencyRecord.user_id == self.user_id) & (IdempotencyRecord.key == self.key)
                & (IdempotencyRecord.token == self.token) & IdempotencyRecord.response_status.is_(None))


class KeyReused(APIError):
    status = 422


def idempotent(user_id: int, work: Callable[[Claim | None], Answer]) -> Response:
    """Run ``work`` once per ``Idempotency-Key`` of ``user_id``; a repeat gets the stored answer."""
    key = request.headers.get(HEADER)
    if key is None:
        return work(None).response()
    if not KEY.fullmatch(key):
        raise BadRequest("Invalid Idempotency-Key", {HEADER: ["Must be 1-255 visible ASCII characters."]})
    claim = Claim(user_id, key, secrets.token_hex(16))
    try:
        outcome = _claim(claim, request_fingerprint())
    except _ClaimCommitLost as lost:
        release(claim)  # the claim may have landed before its answer was lost
        raise lost.__cause__ from None
    if isinstance(outcome, Response):
        return outcome
    try:
        answer = work(outcome)
    except BaseException:
        safe_rollback()  # the session may hold locks (SQLite: the whole file) the release needs
        release(outcome)
        raise
    return answer.response()


def store_answer(claim: Claim | None, answer: Answer) -> None:
    """Record ``answer`` in the claimed row, inside the write's transaction (no-op without a claim).

    :raises Conflict: when a repeat took the key over after this attempt's lease ran out.
    """
    if claim is None:
        return
    response = answer.response()
    headers = {name: response.headers[name] for name in STORED_HEADERS if name in response.headers}
    result = db.session.execute(update(IdempotencyRecord).where(claim.row()).values(
        response_status=answer.status, response_body=response.get_data(),
        response_headers=orjson.dumps(headers).decode(), locked_until=None))
    if result.rowcount != 1:
        raise Conflict("A repeat of this request took its Idempotency-Key over; it was not made twice")


def release(claim: Claim) -> None:
    """Free a key whose attempt failed, so a retry runs it again at once.

    Only a row still in progress under this attempt's token is deleted, never a stored answer, so
    this is safe whatever the attempt's outcome. When the database is away the release is handed to
    a background thread that retries until the lease would have freed the key anyway: the answer
    (503) is not held up, and a retry after the outage finds the key free (or gets 409 briefly).
    """
    try:
        _delete_claim(claim)
    except SQLAlchemyError:
        lease = current_app.config["IDEMPOTENCY_LEASE_SECONDS"]
        _releaser(current_app._get_current_object()).put((claim, time.monotonic() + lease))


def _delete_claim(claim: Claim) -> None:
    with db.engine.begin() as conn:
        conn.execute(delete(IdempotencyRecord).where(claim.row()))


def _releaser(app) -> queue.Queue:
    """The queue of this process's background releaser, started on first use (after gunicorn's fork)."""
    with _RELEASER_LOCK:
        state = app.extensions.setdefault("idempotency_releaser", {})
        if "queue" not in state:
            state["queue"] = queue.Queue()
            threading.Thread(target=_release_later, args=(app, state["queue"]), daemon=True,
                             name="idempotency-releaser").start()
        return state["queue"]


def _release_later(app, pending: queue.Queue) -> None:
    delay = 0.1
    while True:
        claim, deadline = pending.get()
        while time.monotonic() < deadline:
            try:
                with app.app_context():
                    _delete_claim(claim)
                delay = 0.1
                break
            except Exception:  # noqa: BLE001 - the database is still away; keep trying until the lease ends
                time.sleep(delay)
                delay = min(delay * 2, 1.0)


def request_fingerprint() -> str:
    """Hash the method, the path and the request's content (form fields and file bytes, or the raw body)."""
    digest = hashlib.sha256(f"{request.method} {request.path.rstrip('/')}\n".encode())
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        for name, value in sorted(request.form.items(multi=True)):
            digest.update(orjson.dumps(["field", name, value]))
        for name, upload in sorted(request.files.items(multi=True), key=lambda item: item[0]):
            content = hashlib.sha256()
            upload.stream.seek(0)
            for chunk in iter(lambda: upload.stream.read(1 << 16), b""):
                content.update(chunk)
            upload.stream.seek(0)
            digest.update(orjson.dumps(["file", name, content.hexdigest()]))
    else:
        digest.update(hashlib.sha256(request.get_data()).digest())
    return digest.hexdigest()


def purge_expired(now: datetime, batch: int = 1000) -> int:
    """Delete up to ``batch`` expired keys and markers; return how many went."""
    with db.engine.begin() as conn:
        doomed = select(IdempotencyRecord.id).where(IdempotencyRecord.expires_at <= now).limit(batch)
        return conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(doomed))).rowcount


def maybe_purge() -> None:
    """Purge expired keys at most once per ``IDEMPOTENCY_PURGE_INTERVAL`` per process; never raise."""
    state = current_app.extensions.setdefault("idempotency", {"next_purge": 0.0})
    if time.monotonic() < state["next_purge"]:
        return
    state["next_purge"] = time.monotonic() + current_app.config["IDEMPOTENCY_PURGE_INTERVAL"]
    try:
        purge_expired(services().clock())
    except SQLAlchemyError:
        log.warning("could not purge expired Idempotency-Keys", exc_info=True)


class _ClaimCommitLost(Exception):
    """The claim's COMMIT raised: the claim may or may not be in the database."""


def _claim(claim: Claim, fingerprint: str) -> Claim | Response:
    """Claim the key in a transaction of its own (or find its stored answer).

    A failure before COMMIT answers 503 at once (nothing was claimed); a lost COMMIT answer is
    settled by looking again, for up to ``WRITE_VERIFY_SECONDS``: the row is then found under this
    attempt's own token, or not at all.
    """
    maybe_purge()
    deadline = time.monotonic() + current_app.config["WRITE_VERIFY_SECONDS"]
    conflicts, delay = 0, 0.05
    while True:
        try:
            return _claim_once(claim, fingerprint)
        except IntegrityError:
            conflicts += 1  # a concurrent request inserted the same key first: look again
            if conflicts == CLAIM_ATTEMPTS:
                raise Conflict("A request with this Idempotency-Key is in progress",
                               headers={"Retry-After": "1"}) from None
        except _ClaimCommitLost:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _claim_once(claim: Claim, fingerprint: str) -> Claim | Response:
    with db.engine.connect() as conn:
        transaction = conn.begin()
        outcome = _claim_in(conn, claim, fingerprint)
        try:
            transaction.commit()
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise _ClaimCommitLost() from error
        return outcome


def _claim_in(conn, claim: Claim, fingerprint: str) -> Claim | Response:
    config = current_app.config
    now = services().clock()
    fresh = {"fingerprint": fingerprint, "token": claim.token, "created_at": now,
             "locked_until": now + timedelta(seconds=config["IDEMPOTENCY_LEASE_SECONDS"]),
             "expires_at": now + timedelta(seconds=config["IDEMPOTENCY_TTL_SECONDS"]),
             "response_status": None, "response_body": None, "response_headers": None}
    # FOR UPDATE waits while the first attempt's write transaction (which updates the row) commits.
    record = conn.execute(select(IdempotencyRecord.__table__).where(
        IdempotencyRecord.user_id == claim.user_id, IdempotencyRecord.key == claim.key).with_for_update()).first()
    if record is None:
        conn.execute(insert(IdempotencyRecord).values(user_id=claim.user_id, key=claim.key, **fresh))
        return claim
    if record.token == claim.token and record.response_status is None:
        return claim  # our own claim, committed by an attempt whose answer was lost
    if record.expires_at > now:
        if record.fingerprint != fingerprint:
            raise KeyReused("This Idempotency-Key was used with a different request")
        if record.response_status is not None:
            return _replay(record)
        if record.locked_until is not None and record.locked_until > now:
            raise Conflict("A request with this Idempotency-Key is in progress", headers={"Retry-After": "1"})
        log.warning("Idempotency-Key record %s: lease ran out, a repeat takes it over", record.id)
    conn.execute(update(IdempotencyRecord).where(IdempotencyRecord.id == record.id).values(**fresh))
    return claim


def _replay(record) -> Response:
    headers = orjson.loads(record.response_headers or "{}")
    headers[REPLAYED] = "true"
    return Response(record.response_body, status=record.response_status, headers=headers,
                    mimetype="application/json")
