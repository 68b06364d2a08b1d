"""The image service: an ASGI app over :class:`~._store.ImageStore` and a
:class:`~._blobs.BlobStore`, served by hypercorn's trio worker (plumbing in
:mod:`sluiceway.apps._http` and :mod:`sluiceway.apps._service_base`)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from .._http import HTTPError, Request, Response
from .._service_base import HttpService
from ._blobs import BlobCorruptError, BlobNotFoundError, BlobStore, FileBlobStore, content_type_of
from ._faults import FaultRule, ImageFaults, faults_changes
from ._render import RenderedImage, render_image
from ._store import ImageStore
from ._validation import GenerateRequest, parse_counts_query, parse_generate_request, valid_key

__all__ = ["DEFAULT_IMAGE_URL", "DEFAULT_MAX_BODY_BYTES", "ImageService", "serve_images"]

log = logging.getLogger("sluiceway.apps.imagegen")

#: Where clients look for the image service unless told otherwise (the command line serves on
#: a free port unless given ``--port 8086``).
DEFAULT_IMAGE_URL = "http://127.0.0.1:8086"

#: Requests with a larger body are answered 413 ``PAYLOAD_TOO_LARGE``.
DEFAULT_MAX_BODY_BYTES = 256 * 1024

#: Renders at once in worker threads (Pillow holds the GIL for much of the drawing, so more
#: would mostly queue).
_RENDER_THREADS = 4

#: Answers to a generation that say "try again in a second".
_RETRY_AFTER_STATUSES = frozenset({429, 503})

#: Blobs are named by their content: a client may keep one forever. A browser must take the
#: content type as given (a blob is never sniffed into something else).
_BLOB_HEADERS = (
    ("cache-control", "public, max-age=31536000, immutable"),
    ("x-content-type-options", "nosniff"),
    # A stored page (a story's HTML) is shown, never trusted: no script, an origin of its own.
    ("content-security-policy", "sandbox"),
)


class ImageService(HttpService[ImageStore, ImageFaults]):
    """The image generation service: ``POST /v1/images/generate`` renders a picture for a
    prompt (:func:`~._render.render_image`), stores it in ``blobs`` (a :class:`BlobStore`, or a
    directory for a :class:`FileBlobStore`) and records the result in the SQLite file
    ``db_path``, de-duplicated by idempotency key, behind a fault switch (:class:`ImageFaults`).

    The instance is an ASGI application (``await service(scope, receive, send)``); serve it
    with :meth:`serve` (or :func:`serve_images`). Open the store first, with ``async with
    service:`` or :meth:`open`.

    A key is generated at most once: requests for one key are serialised within the process,
    and the ``images`` table's unique key settles a race between processes sharing the file
    (the loser answers the winner's result). A failed attempt stores nothing: a retry with the
    same key may succeed. A repeat of a stored key is answered 200 from the store at once,
    whatever the faults and whatever else the (valid) body says.

    With ``threads=False`` SQLite, rendering and the file blob store run on the trio thread
    (for tests on a ``MockClock`` with autojump, where a wait on a worker thread lets virtual
    time jump).
    """

    _log = log

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        blobs: BlobStore | str | os.PathLike[str],
        *,
        faults: ImageFaults | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        threads: bool = True,
    ) -> None:
        super().__init__(
            ImageStore(db_path, threads=threads),
            faults=faults if faults is not None else ImageFaults(),
            parse_faults=faults_changes,
            max_body_bytes=max_body_bytes,
            routes={
                "/v1/images/generate": {"POST": self._post_generate},
                "/v1/images/counts": {"GET": self._get_counts},
                "/v1/images/{id}": {"GET": self._get_image},
                "/v1/blobs/{key}": {"GET": self._get_blob},
            },
        )
        if isinstance(blobs, str | os.PathLike):
            blobs = FileBlobStore(blobs, threads=threads)
        elif not isinstance(blobs, BlobStore):
            raise TypeError(f"blobs must be a BlobStore or a directory, not {blobs!r}")
        self.blobs: BlobStore = blobs
        self._render_limiter = trio.CapacityLimiter(_RENDER_THREADS)
        self._threads = threads

    # -- state -----------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        """``{"generations", "requests", "repeats", "failures", "inFlight"}``: stored images;
        ``POST /v1/images/generate`` requests answered (all of them: the new images, the 200
        repeats, the errors); new generations in progress now. ``requests == generations +
        repeats + failures`` on a file used by one service at a time (the counts persist in the
        file; ``inFlight`` is this process's)."""
        return await super().stats()

    async def counts(self, prefix: str | None = None) -> dict[str, dict[str, int]]:
        """Per idempotency key starting with ``prefix`` (``None``: every key):
        ``{"requests", "generations"}``, the requests answered with that key (repeats and
        failures included) and the images stored for it (never more than one)."""
        return await self._store.counts(prefix)

    async def image(self, image_id: str) -> dict[str, Any] | None:
        """The stored result with this id, or ``None``."""
        return await self._store.by_id(image_id)

    # -- handlers --------------------------------------------------------------------------

    async def _get_counts(self, request: Request) -> Response:
        prefix = parse_counts_query(request.query)
        return Response(200, {"keys": await self.counts(prefix)})

    async def _get_image(self, request: Request) -> Response:
        image_id = request.params["id"]
        result = await self.image(image_id)
        if result is None:
            raise HTTPError(404, "NOT_FOUND", f"no image {image_id}")
        return Response(200, result)

    async def _get_blob(self, request: Request) -> Response:
        key = request.params["key"]
        try:
            data = await self.blobs.get(key)
        except BlobNotFoundError:
            raise HTTPError(404, "NOT_FOUND", f"no blob {key}") from None
        except BlobCorruptError:
            log.exception("cannot serve blob %s", key)
            raise HTTPError(500, "BLOB_CORRUPT", f"blob {key} is corrupt") from None
        except ValueError as error:
            raise HTTPError(
                400,
                "VALIDATION_ERROR",
                f"invalid object_key: {error}",
                details=[{"field": "object_key", "message": str(error)}],
            ) from None
        return Response.of_bytes(200, data, content_type_of(key), _BLOB_HEADERS)

    async def _post_generate(self, request: Request) -> Response:
        key: str | None = None
        # The lambda reads key when a failure is counted: by then it may have been found.
        async with self._failures_counted(lambda: self._store.count_failure(key)):
            body = await request.json()
            key = valid_key(body)  # a request failing validation still counts against its key
            return await self._generate(parse_generate_request(body))

    async def _generate(self, generation: GenerateRequest) -> Response:
        key = generation.idempotency_key
        if key is None:
            return await self._new_image(generation)
        async with self._key_locks.hold(key):
            stored = await self._store.repeat(key)
            if stored is not None:
                return Response(200, stored)
            return await self._new_image(generation)

    async def _new_image(self, generation: GenerateRequest) -> Response:
        faults = self._faults  # one setting for the whole request, whatever changes meanwhile
        rule = faults.rule_for(generation.fault_text())
        self._in_flight += 1
        try:
            delay = faults.latency if rule is None or rule.latency is None else rule.latency
            if faults.jitter > 0:
                delay += self._rng.uniform(0.0, faults.jitter)
            if delay > 0:
                await trio.sleep(delay)
            self._inject_failure(faults, rule)  # after the wait: a failing backend is slow too
            image = await self._render(generation)
            object_key = await self.blobs.put(image.data, extension=image.format)
            result = _result(generation, image, object_key)
            inserted, stored = await self._store.record(result)
        finally:
            self._in_flight -= 1
        if not inserted:  # another process sharing the file generated the key first
            return Response(200, stored)
        log.info("generated %s (%s, key %s)", result["id"], object_key, generation.idempotency_key)
        return Response(201, result, (("location", f"/v1/images/{result['id']}"),))

    def _inject_failure(self, faults: ImageFaults, rule: FaultRule | None) -> None:
        if rule is not None and rule.fail_status is not None:
            status, code = rule.fail_status, rule.fail_code or faults.fail_code
            message = f"injected failure ({code}) for a request matching {list(rule.match)}"
        elif faults.fail_rate > 0 and self._rng.random() < faults.fail_rate:
            status, code = faults.fail_status, faults.fail_code
            message = f"injected failure ({code})"
        else:
            return
        retry_after = (("retry-after", "1"),) if status in _RETRY_AFTER_STATUSES else ()
        raise HTTPError(status, code, message, headers=retry_after)

    async def _render(self, generation: GenerateRequest) -> RenderedImage:
        render = partial(
            render_image,
            generation.prompt,
            quality=generation.quality,
            aspect_ratio=generation.aspect_ratio,
        )
        if not self._threads:
            await trio.lowlevel.checkpoint()
            return render()
        return await trio.to_thread.run_sync(render, limiter=self._render_limiter)


def _result(generation: GenerateRequest, image: RenderedImage, object_key: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": str(uuid.uuid4()),
        "idempotency_key": generation.idempotency_key,
        "object_key": object_key,
        "format": image.format,
        "content_type": image.content_type,
        "width": image.width,
        "height": image.height,
        "bytes": len(image.data),
        "sha256": hashlib.sha256(image.data).hexdigest(),
        "prompt": generation.prompt,
        "quality": generation.quality,
        "aspect_ratio": generation.aspect_ratio,
        "metadata": dict(generation.metadata),
        "created_at": now,
    }


async def serve_images(
    db_path: str | os.PathLike[str],
    blobs: BlobStore | str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: ImageFaults | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an :class:`ImageService` on ``db_path`` and ``blobs`` over HTTP until cancelled.

    For ``url = await nursery.start(serve_images, db, blob_dir)``: reports the base URL
    (``"http://127.0.0.1:41234"``; ``port=0`` picks a free port) once the socket listens.
    Cancelling stops the server (requests in progress are cancelled; an image is recorded
    entirely or not at all) and closes the file.
    """
    service = ImageService(db_path, blobs, faults=faults, max_body_bytes=max_body_bytes)
    async with service:
        await service.serve(host=host, port=port, task_status=task_status)
