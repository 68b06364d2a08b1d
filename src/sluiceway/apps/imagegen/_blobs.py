"""Blob stores: where generated images go. :class:`BlobStore` is the interface the image service
(and its clients, such as the story application) use; :class:`FileBlobStore` keeps
content-addressed files in a directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import trio

from ..._errors import SluicewayError

__all__ = [
    "BLOB_TYPES",
    "BlobCorruptError",
    "BlobNotFoundError",
    "BlobStore",
    "FileBlobStore",
    "content_type_of",
]

T = TypeVar("T")

#: The extensions a blob may have, and the content type each is served with: the images, and
#: the documents built from them (the story application keeps its HTML pages here too).
#: ``jpeg``, not ``jpg``: one spelling per format, so that the same bytes get the same key.
BLOB_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "html": "text/html; charset=utf-8",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
}

_KEY = re.compile(r"(?P<digest>[0-9a-f]{64})\.(?P<extension>[a-z]+)")

#: How many blob reads and writes may use worker threads at once (per store).
_THREADS = 8


class BlobNotFoundError(SluicewayError, KeyError):
    """No blob is stored under this key."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument, quotes and all: keep the sentence.
        return str(self.args[0]) if self.args else ""


class BlobCorruptError(SluicewayError):
    """A stored blob's bytes no longer match the digest its key names."""


@runtime_checkable
class BlobStore(Protocol):
    """Somewhere to keep image bytes under a key (the image service stores every image it
    generates in one; its clients read them back by the ``object_key`` of the result)."""

    async def put(self, data: bytes, *, extension: str) -> str:
        """Store ``data`` (a file of type ``extension``, e.g. ``"png"``); returns its key."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises :class:`BlobNotFoundError` (a
        :class:`KeyError`) when there are none, :class:`ValueError` for a malformed key."""
        ...


def content_type_of(key: str) -> str:
    """The content type a blob key's extension stands for (``application/octet-stream`` for
    an extension this module does not know)."""
    return BLOB_TYPES.get(key.rpartition(".")[2], "application/octet-stream")


def _check_extension(extension: str) -> None:
    if extension not in BLOB_TYPES:
        allowed = ", ".join(BLOB_TYPES)
        raise ValueError(f"unsupported blob extension {extension!r} (allowed: {allowed})")


class FileBlobStore:
    """Content-addressed files under ``root``: the key of some bytes is ``"<sha256 hex>.<ext>"``
    and the file is ``root/<first 2 hex digits>/<key>``.

    Storing is idempotent (the same bytes give the same key; a file already there is not
    written again) and atomic (a temporary file in the same directory, then
    :func:`os.replace`: a reader never sees half a file, and a crash leaves at most a stray
    temporary file). Reading checks the key strictly (no path can escape ``root``) and checks
    the bytes against the digest in the key, so a corrupt file is reported, never served.
    ``root`` is created when the first blob is stored.

    With ``threads`` (the default) file I/O runs in worker threads, at most 8 at a time; with
    ``threads=False`` it runs on the trio thread (for tests on a ``MockClock`` with autojump,
    where a wait on a worker thread lets virtual time jump).
    """

    def __init__(self, root: str | os.PathLike[str], *, threads: bool = True) -> None:
        self.root = Path(root)
        self.threads = threads
        self._limiter = trio.CapacityLimiter(_THREADS)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    @staticmethod
    def key_for(data: bytes, *, extension: str) -> str:
        """The key ``data`` is (or would be) stored under."""
        _check_extension(extension)
        return f"{hashlib.sha256(data).hexdigest()}.{extension}"

    @staticmethod
    def content_type(key: str) -> str:
        """The content type of the blob ``key`` (``image/png``, ``image/jpeg``...); raises
        :class:`ValueError` for a malformed key."""
        _parse_key(key)
        return BLOB_TYPES[key.rpartition(".")[2]]

    def path_of(self, key: str) -> Path:
        """Where the blob ``key`` is (or would be) stored; raises :class:`ValueError` for a
        malformed key."""
        digest = _parse_key(key)
        return self.root / digest[:2] / key

    async def put(self, data: bytes, *, extension: str) -> str:
        """Store ``data`` as a file of type ``extension`` (one of :data:`BLOB_TYPES`);
        returns its key, ``"<sha256 hex>.<extension>"``."""
        key = self.key_for(data, extension=extension)
        await self._run(self._write, self.path_of(key), data)
        return key

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``. Raises :class:`ValueError` for a malformed key,
        :class:`BlobNotFoundError` when nothing is stored under it, and
        :class:`BlobCorruptError` when the file's bytes do not match the key's digest."""
        path = self.path_of(key)
        try:
            data = await self._run(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFoundError(f"no blob {key} in {self.root}") from None
        if hashlib.sha256(data).hexdigest() != key.partition(".")[0]:
            raise BlobCorruptError(
                f"blob {key} in {self.root} is corrupt: its sha256 is not the one its key names"
            )
        return data

    async def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key`` (its bytes are not checked)."""
        return await self._run(self.path_of(key).is_file)

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        if not self.threads:
            await trio.lowlevel.checkpoint()
            return func(*args)
        return await trio.to_thread.run_sync(func, *args, limiter=self._limiter)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        try:
            if path.stat().st_size == len(data):
                return  # content-addressed: a file of the right size there holds these bytes
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                # On disk before the rename: a crash must not leave an empty file under a key.
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)  # mkstemp makes it private; blobs are served to anyone
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def _parse_key(key: str) -> str:
    """The digest of a well-formed key; :class:`ValueError` for anything else (which is how a
    path such as ``../x`` or ``ab/../../etc`` is refused before it reaches the file system)."""
    found = _KEY.fullmatch(key) if isinstance(key, str) else None
    if found is None or found["extension"] not in BLOB_TYPES:
        raise ValueError(
            f"malformed blob key {key!r}: expected <64 lower-case hex digits>."
            f"<{'|'.join(BLOB_TYPES)}>"
        )
    return found["digest"]
