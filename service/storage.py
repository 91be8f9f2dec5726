"""Content-addressed picture storage behind a small put / delete / path / read interface: the local disk or S3.

``STORAGE_URL`` picks the backend (``storage_from_url``): ``file:///path`` keeps files on the
local disk (served by the service at ``/media/...``); ``s3://bucket/prefix`` writes objects to
any S3-compatible store through boto3 (credentials, region and ``AWS_ENDPOINT_URL`` from the
usual AWS variables), each under ``prefix/<key>`` with ``Cache-Control: public,
max-age=31536000, immutable`` and its ``Content-Type``: names are hashes of the bytes, so an
object never changes and a CDN may keep it forever. Replaced pictures are deleted right after
the commit that stops pointing at them (``service.writes``), on both backends; a delete that
fails (store unreachable) leaves an orphan object, logged, never a dangling URL.
"""
from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from service.errors import ServiceUnavailable

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
UNAVAILABLE = "Picture storage unavailable, try again later"


class StorageError(OSError):
    """The object store could not be reached or refused a delete."""

_SUFFIX = re.compile(r"[A-Za-z0-9_-]*")


class LocalStorage:
    """Files named by a hash of their bytes under ``root``; writes are atomic, reads refuse to leave ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def put(self, folder: str, data: bytes, suffix: str = "") -> str:
        """Store ``data`` under ``folder`` and return its key, e.g. ``avatars/5/3f2c9a1b2c3d4e5f_128.jpg``."""
        _check_key(folder)
        if not _SUFFIX.fullmatch(suffix):
            raise ValueError(f"invalid suffix: {suffix!r}")
        name = f"{hashlib.blake2b(data, digest_size=8).hexdigest()}{suffix}.jpg"
        key = f"{folder}/{name}"
        directory = self.root / folder
        if not directory.resolve().is_relative_to(self.root):  # checked before mkdir creates anything outside
            raise ValueError(f"folder leaves the storage root: {folder!r}")
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        if target.is_file() and not target.is_symlink():
            return key  # same name, same bytes: an earlier write already finished (writes are atomic)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp, 0o644)  # mkstemp makes it 0600; a web server may serve these files directly
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return key

    def delete(self, key: str) -> None:
        """Remove the file behind ``key``; a missing file is fine, an invalid key is a ValueError."""
        _check_key(key)
        target = self.root / key
        if target.parent.resolve().is_relative_to(self.root):
            target.unlink(missing_ok=True)  # unlinks a symlink itself, never what it points to

    def path(self, key: str) -> Path | None:
        """The resolved file for ``key``, or None if it is missing, invalid or resolves outside ``root``."""
        try:
            _check_key(key)
        except ValueError:
            return None
        resolved = (self.root / key).resolve()
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            return None
        return resolved

    def read(self, key: str) -> bytes | None:
        """The bytes behind ``key``, or None."""
        path = self.path(key)
        return path.read_bytes() if path is not None else None


def _name(data: bytes, folder: str, suffix: str) -> str:
    _check_key(folder)
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"invalid suffix: {suffix!r}")
    return f"{folder}/{hashlib.blake2b(data, digest_size=8).hexdigest()}{suffix}.jpg"


class S3Storage:
    """Content-addressed objects in an S3 bucket under ``prefix``, written immutable (see the module docstring).

    A failed or unreachable upload raises ``ServiceUnavailable`` (503 JSON): the write that
    needed it rolls back, so the old picture stays. ``path`` is always None; ``read`` lets
    ``/media/...`` still answer when ``MEDIA_BASE_URL`` does not point at the bucket or a CDN.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else boto3.client("s3", config=Config(
            connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}))

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, folder: str, data: bytes, suffix: str = "") -> str:
        """Upload ``data`` (unless an object of that name, hence those bytes, is there) and return its key."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = _name(data, folder, suffix)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data, CacheControl=IMMUTABLE,
                ContentType=mimetypes.guess_type(key)[0] or "application/octet-stream")
        except (BotoCoreError, ClientError) as error:
            log.warning("picture upload to s3://%s/%s failed: %s", self.bucket, self.object_key(key), error)
            raise ServiceUnavailable(UNAVAILABLE, headers={"Retry-After": "5"}) from None
        return key

    def delete(self, key: str) -> None:
        """Remove the object behind ``key`` (a missing one is fine); StorageError if the store cannot."""
        from botocore.exceptions import BotoCoreError, ClientError

        _check_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"could not delete s3://{self.bucket}/{self.object_key(key)}: {error}") from None

    def path(self, key: str) -> Path | None:
        return None

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None if it is missing or the key is invalid; StorageError if unreachable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            _check_key(key)
        except ValueError:
            return None
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageError(str(error)) from None
        except BotoCoreError as error:
            raise StorageError(str(error)) from None


def storage_from_url(url: str) -> LocalStorage | S3Storage:
    """The backend for ``STORAGE_URL``: ``file:///path`` or ``s3://bucket/prefix``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStorage(unquote(parts.path))
    if parts.scheme == "s3" and parts.netloc:
        return S3Storage(parts.netloc, unquote(parts.path))
    raise ValueError(f"STORAGE_URL must be file:///path or s3://bucket/prefix, not {url!r}")


def _check_key(key: str) -> None:
    """Refuse absolute keys, NUL, backslashes and any empty, ``.`` or ``..`` component."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\0" in key or "\\" in key:
        raise ValueError(f"invalid storage key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key: {key!r}")
