"""Content-addressed file storage on the local disk, behind a small put / delete / path interface."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

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


def _check_key(key: str) -> None:
    """Refuse absolute keys, NUL, backslashes and any empty, ``.`` or ``..`` component."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\0" in key or "\\" in key:
        raise ValueError(f"invalid storage key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key: {key!r}")
