"""The content-addressed file blob store, on a real directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from sluiceway._errors import SluicewayError
from sluiceway.apps.imagegen import BlobCorruptError, BlobNotFoundError, BlobStore, FileBlobStore

DATA = b"\x89PNG\r\n\x1a\n not really a picture"
DIGEST = hashlib.sha256(DATA).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


async def test_put_stores_by_content_and_get_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = FileBlobStore(root)
    assert isinstance(store, BlobStore)
    assert not root.exists()  # created on first use

    key = await store.put(DATA, extension="png")
    assert key == f"{DIGEST}.png"
    assert files_under(root) == [f"{DIGEST[:2]}/{key}"]
    assert store.path_of(key) == root / DIGEST[:2] / key
    assert await store.get(key) == DATA
    assert await store.exists(key)
    assert store.content_type(key) == "image/png"

    # The same bytes as another type are another blob; as the same type, the same one.
    jpeg = await store.put(DATA, extension="jpeg")
    assert jpeg == f"{DIGEST}.jpeg"
    assert store.content_type(jpeg) == "image/jpeg"
    assert len(files_under(root)) == 2

    # Documents built from the images (a story's page) are kept the same way.
    page = await store.put(b"<html></html>", extension="html")
    assert store.content_type(page) == "text/html; charset=utf-8"
    assert await store.get(page) == b"<html></html>"


async def test_put_is_idempotent_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    key = await store.put(DATA, extension="png")
    path = store.path_of(key)
    os.utime(path, (1, 1))  # a rewrite would change the modification time
    assert await store.put(DATA, extension="png") == key
    assert path.stat().st_mtime == 1
    assert files_under(tmp_path) == [f"{DIGEST[:2]}/{key}"]


async def test_concurrent_puts_of_new_bytes_make_one_file(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    keys: set[str] = set()

    async def put() -> None:
        keys.add(await store.put(b"fresh bytes", extension="png"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(put)
    assert len(keys) == 1
    (key,) = keys
    assert files_under(tmp_path) == [f"{key[:2]}/{key}"]
    assert await store.get(key) == b"fresh bytes"


async def test_a_truncated_file_is_rewritten_by_the_next_put(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    key = await store.put(DATA, extension="png")
    store.path_of(key).write_bytes(DATA[:5])
    with pytest.raises(BlobCorruptError):
        await store.get(key)
    assert await store.put(DATA, extension="png") == key
    assert await store.get(key) == DATA


async def test_a_missing_blob_is_a_key_error(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "never-created")
    with pytest.raises(BlobNotFoundError) as caught:
        await store.get(f"{DIGEST}.png")
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, SluicewayError)
    assert str(caught.value).startswith(f"no blob {DIGEST}.png")  # a sentence, not a repr
    assert not await store.exists(f"{DIGEST}.png")


async def test_a_corrupt_blob_is_detected(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    key = await store.put(DATA, extension="png")
    path = store.path_of(key)
    path.write_bytes(DATA.replace(b"really", b"REALLY"))  # same size, other bytes
    with pytest.raises(BlobCorruptError, match="corrupt"):
        await store.get(key)


MALFORMED = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    f"{DIGEST[:2]}/../{DIGEST}.png",
    f"../{DIGEST}.png",
    f"{DIGEST}.png/..",
    f"{DIGEST}.png\x00",
    f"{DIGEST.upper()}.png",
    f"{DIGEST[:-1]}.png",
    f"{DIGEST}.jpg",
    f"{DIGEST}.PNG",
    f"{DIGEST}.exe",
    f"{DIGEST}",
    ".png",
    "",
]


@pytest.mark.parametrize("key", MALFORMED)
async def test_malformed_keys_are_refused_before_the_file_system(tmp_path: Path, key: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not serve")
    store = FileBlobStore(tmp_path / "blobs")
    await store.put(DATA, extension="png")
    with pytest.raises(ValueError, match="malformed blob key"):
        await store.get(key)
    with pytest.raises(ValueError, match="malformed blob key"):
        store.path_of(key)


@pytest.mark.parametrize("extension", ["jpg", "PNG", "", "png/../x", "exe"])
async def test_unsupported_extensions_are_refused(tmp_path: Path, extension: str) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(ValueError, match="unsupported blob extension"):
        await store.put(DATA, extension=extension)
    assert files_under(tmp_path) == []


async def test_without_threads_on_virtual_time(tmp_path: Path, autojump_clock: object) -> None:
    store = FileBlobStore(tmp_path, threads=False)
    start = trio.current_time()
    key = await store.put(DATA, extension="webp")
    assert await store.get(key) == DATA
    assert store.content_type(key) == "image/webp"
    assert trio.current_time() == start
