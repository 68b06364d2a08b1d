"""The image generation service the story application calls: ``POST /v1/images/generate``
renders a deterministic picture for a prompt with Pillow, stores it in a content-addressed blob
store, and records the result in SQLite, de-duplicated by idempotency key, behind a fault switch
(latency, random failures, rules aimed at some requests). Served on 127.0.0.1 by hypercorn's
trio worker.

HTTP contract (JSON in and out; every error is ``{"error": {"code", "message", "details"}}``):

``POST /v1/images/generate``
    ``{prompt (1-4000 chars, not blank), quality? ("low" | "medium" | "high"; default
    "medium"), aspect_ratio? ("1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16"; default
    "3:2"), idempotency_key? (1-256 chars, no control characters), metadata? ({name: string,
    number or boolean}, <= 50 entries)}``.

    * **201** the result ``{id, idempotency_key, object_key, format, content_type, width,
      height, bytes, sha256, prompt, quality, aspect_ratio, metadata, created_at}`` (and
      ``Location: /v1/images/{id}``) for a new image, after the faults' latency;
    * **200** the *stored* result for a key already generated, at once, whatever else the
      body says and whatever the faults (concurrent requests with one key make exactly one
      image, also across processes sharing the SQLite file);
    * **400** ``VALIDATION_ERROR`` naming every bad or unknown field in ``details`` (``[{field,
      message}]``), or ``INVALID_JSON``; **415** ``UNSUPPORTED_MEDIA_TYPE``; **413**
      ``PAYLOAD_TOO_LARGE``;
    * the injected failure: ``fail_status`` with ``fail_code`` (503 ``GENERATION_FAILED`` by
      default; 429 and 503 carry ``Retry-After: 1``), or a rule's status. **A failed attempt
      stores nothing**: a retry with the same key generates once the fault is gone;
    * **500** ``INTERNAL_ERROR`` for anything unexpected (logged; no traceback in the body).

``GET /v1/images/{id}``: a stored result, or 404 ``NOT_FOUND``. ``GET /v1/blobs/{object_key}``:
the image's bytes with its content type (``image/png``, ``image/jpeg``), 400 for a malformed
key, 404 for a missing one. ``GET /v1/images/counts[?prefix=P]``: ``{"keys": {key: {"requests",
"generations"}}}`` for the keys starting with ``P``: every answered request with the key
(repeats and failures included) and the images stored for it (at most one). ``GET /health``:
``{"status": "ok"}``. ``GET /stats``: ``{"generations", "requests", "repeats", "failures",
"inFlight"}``. ``GET``/``POST /admin/faults``: the :class:`ImageFaults` settings (partial
updates; ``rules`` as ``[{"match": [...] or "text", "latency"?, "fail_status"?,
"fail_code"?}]``; 400 ``VALIDATION_ERROR`` for a bad or unknown setting). Unknown paths: 404
``NOT_FOUND``; a wrong method: 405 ``METHOD_NOT_ALLOWED`` with ``Allow``.

Command line: ``python -m sluiceway.apps.imagegen --db PATH --blobs DIR [--port N]
[--latency S] [--fail-rate R] [--fail-match TEXT]...``.
"""

from ._blobs import BlobCorruptError, BlobNotFoundError, BlobStore, FileBlobStore
from ._cli import main
from ._faults import FaultRule, ImageFaults
from ._render import ASPECT_RATIOS, QUALITIES, RenderedImage, render_image
from ._service import DEFAULT_IMAGE_URL, DEFAULT_MAX_BODY_BYTES, ImageService, serve_images

__all__ = [
    "ASPECT_RATIOS",
    "BlobCorruptError",
    "BlobNotFoundError",
    "BlobStore",
    "DEFAULT_IMAGE_URL",
    "DEFAULT_MAX_BODY_BYTES",
    "FaultRule",
    "FileBlobStore",
    "ImageFaults",
    "ImageService",
    "QUALITIES",
    "RenderedImage",
    "main",
    "render_image",
    "serve_images",
]
