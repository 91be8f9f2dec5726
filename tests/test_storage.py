"""Local content-addressed storage: names, atomic writes, deletes and refusing paths out of the root."""
import hashlib
import os
import re
import threading
from pathlib import Path

import pytest

from service.storage import LocalStorage

pytestmark = pytest.mark.tdd_green

DATA = b"\xff\xd8\xff\xe0 pretend jpeg bytes \xff\xd9"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "media")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_put_names_the_file_by_a_hash_of_its_bytes(storage: LocalStorage) -> None:
    key = storage.put("avatars/5", DATA, "_128")
    digest = hashlib.blake2b(DATA, digest_size=8).hexdigest()
    assert key == f"avatars/5/{digest}_128.jpg"
    assert re.fullmatch(r"avatars/5/[0-9a-f]{16}_128\.jpg", key)
    assert (storage.root / key).read_bytes() == DATA


def test_path_returns_the_resolved_file_inside_the_root(storage: LocalStorage) -> None:
    key = storage.put("flyers/9", DATA)
    path = storage.path(key)
    assert path is not None and path.is_absolute() and path.read_bytes() == DATA
    assert path.is_relative_to(storage.root.resolve())


def test_same_bytes_give_the_same_key_and_one_file(storage: LocalStorage) -> None:
    first = storage.put("avatars/5", DATA)
    second = storage.put("avatars/5", DATA)
    assert first == second
    assert files_under(storage.root) == [first]


def test_different_bytes_or_suffix_give_different_keys(storage: LocalStorage) -> None:
    keys = {storage.put("avatars/5", DATA), storage.put("avatars/5", DATA + b"!"), storage.put("avatars/5", DATA, "_128")}
    assert len(keys) == 3


def test_writes_leave_no_temporary_files(storage: LocalStorage) -> None:
    for n in range(5):
        storage.put("flyers/1", DATA * (n + 1))
    names = files_under(storage.root)
    assert len(names) == 5 and all(name.endswith(".jpg") and "/." not in name for name in names)


def test_a_failed_write_leaves_no_temporary_file(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.put("flyers/1", DATA)
    assert files_under(storage.root) == []


def test_concurrent_writers_of_the_same_bytes_never_expose_a_partial_file(storage: LocalStorage) -> None:
    big = os.urandom(2 * 1024 * 1024)
    key = storage.put("flyers/2", b"warm-up")
    target = storage.root / f"flyers/2/{hashlib.blake2b(big, digest_size=8).hexdigest()}.jpg"
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            if target.exists():
                seen.append(len(target.read_bytes()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        writers = [threading.Thread(target=storage.put, args=("flyers/2", big)) for _ in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    finally:
        done.set()
        thread.join()
    assert all(size == len(big) for size in seen)
    assert target.read_bytes() == big
    assert len(files_under(storage.root)) == 2 and key in files_under(storage.root)


def test_files_are_readable_by_others(storage: LocalStorage) -> None:
    key = storage.put("avatars/1", DATA)
    assert (storage.root / key).stat().st_mode & 0o777 == 0o644


def test_delete_removes_the_file_and_a_missing_file_is_fine(storage: LocalStorage) -> None:
    key = storage.put("avatars/5", DATA)
    storage.delete(key)
    assert storage.path(key) is None and not (storage.root / key).exists()
    storage.delete(key)
    storage.delete("avatars/never/existed.jpg")


def test_path_of_a_missing_key_is_none(storage: LocalStorage) -> None:
    assert storage.path("avatars/5/0000000000000000.jpg") is None
    assert storage.path("avatars") is None  # a folder is not a file


BAD_KEYS = ["../secret.jpg", "avatars/../../secret.jpg", "/etc/passwd", "avatars/5/\0.jpg", "", ".",
            "avatars//x.jpg", "avatars/./x.jpg", "avatars\\..\\x.jpg", "..", "avatars/5/.."]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_path_refuses_traversal_absolute_and_nul_keys(storage: LocalStorage, tmp_path: Path, key: str) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    storage.put("avatars/5", DATA)
    assert storage.path(key) is None


@pytest.mark.parametrize("key", BAD_KEYS)
def test_delete_refuses_bad_keys_and_touches_nothing(storage: LocalStorage, tmp_path: Path, key: str) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    with pytest.raises(ValueError):
        storage.delete(key)
    assert secret.read_bytes() == b"secret"


@pytest.mark.parametrize("folder", ["../outside", "/tmp/abs", "a/../../b", "a\0b", ""])
def test_put_refuses_a_folder_outside_the_root(storage: LocalStorage, folder: str) -> None:
    with pytest.raises(ValueError):
        storage.put(folder, DATA)


@pytest.mark.parametrize("suffix", ["/x", "../x", ".png", "a b", "\0"])
def test_put_refuses_a_suffix_that_is_not_a_plain_word(storage: LocalStorage, suffix: str) -> None:
    with pytest.raises(ValueError):
        storage.put("avatars/5", DATA, suffix)


def test_symlinked_file_pointing_outside_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    storage.put("avatars/5", DATA)
    (storage.root / "avatars/5/evil.jpg").symlink_to(secret)
    assert storage.path("avatars/5/evil.jpg") is None
    storage.delete("avatars/5/evil.jpg")  # removes the link, never its target
    assert secret.read_bytes() == b"secret"
    assert not (storage.root / "avatars/5/evil.jpg").is_symlink()


def test_symlinked_folder_pointing_outside_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    storage.root.mkdir(parents=True, exist_ok=True)
    (storage.root / "linked").symlink_to(outside, target_is_directory=True)
    assert storage.path("linked/secret.jpg") is None
    for folder in ("linked", "linked/deeper"):
        with pytest.raises(ValueError):
            storage.put(folder, DATA)
    storage.delete("linked/secret.jpg")
    assert (outside / "secret.jpg").read_bytes() == b"secret"
    assert list(outside.iterdir()) == [outside / "secret.jpg"]


def test_symlink_inside_the_root_is_followed(storage: LocalStorage) -> None:
    key = storage.put("avatars/5", DATA)
    (storage.root / "avatars/5/alias.jpg").symlink_to(storage.root / key)
    assert storage.path("avatars/5/alias.jpg") == (storage.root / key).resolve()


def test_a_symlinked_root_still_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    storage = LocalStorage(tmp_path / "link")
    key = storage.put("avatars/1", DATA)
    assert storage.path(key) == real / key
