"""Task progress envelopes and their JSON-safe form."""

from __future__ import annotations

import base64
import datetime
import enum
import math
import sys
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import cattrs

from .._errors import RemoteTaskError

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


class EnvelopeKind(enum.Enum):
    """What an envelope reports."""

    #: A value the task emitted while running.
    INTERMEDIATE = "INTERMEDIATE"
    #: The task finished; ``value`` is its result. Exactly one FINAL or ERROR per task.
    FINAL = "FINAL"
    #: The task failed (or was cancelled or timed out); ``error`` says why.
    ERROR = "ERROR"


@attrs.frozen(slots=True, repr=False)
class TaskEnvelope(Generic[I, O]):
    """One report about one task of a runner.

    ``task_id`` counts tasks in the order they were taken from the source, starting at 1.
    Envelopes of one task arrive in order: any ``INTERMEDIATE`` ones, then exactly one ``FINAL``
    or ``ERROR``. ``started_at`` and ``at`` are trio clock times (``trio.current_time()``).
    """

    task_id: int
    kind: EnvelopeKind
    value: Any = None
    error: BaseException | None = None
    key: Hashable | None = None
    started_at: float = 0.0
    at: float = 0.0

    @property
    def is_final(self) -> bool:
        """True for the FINAL or ERROR envelope that ends a task."""
        return self.kind is not EnvelopeKind.INTERMEDIATE

    def __repr__(self) -> str:
        key = "" if self.key is None else f" key={self.key!r}"
        body = f" error={self.error!r}" if self.error is not None else f" value={self.value!r}"
        return f"<TaskEnvelope #{self.task_id}{key} {self.kind.value}{body}>"


def _fast_constructor() -> Any:
    """A constructor of :class:`TaskEnvelope` for the runners' per-task path.

    attrs builds a frozen instance through ``object.__setattr__``, once per field; setting the
    slots through their descriptors makes the same object (same class, same fields, as frozen
    as ever: ``__setattr__`` still refuses) in about half the time. Positional, all fields.
    """
    new = object.__new__
    setters = [getattr(TaskEnvelope, field.name).__set__ for field in attrs.fields(TaskEnvelope)]
    if len(setters) != 7:  # pragma: no cover - a new field must be added here too
        raise AssertionError("TaskEnvelope's fields changed: update make_envelope")
    set_id, set_kind, set_value, set_error, set_key, set_started, set_at = setters

    def make_envelope(  # noqa: PLR0917 - positional, as on the hot path
        task_id: int,
        kind: EnvelopeKind,
        value: Any,
        error: BaseException | None,
        key: Hashable | None,
        started_at: float,
        at: float,
    ) -> TaskEnvelope[Any, Any]:
        envelope: TaskEnvelope[Any, Any] = new(TaskEnvelope)
        set_id(envelope, task_id)
        set_kind(envelope, kind)
        set_value(envelope, value)
        set_error(envelope, error)
        set_key(envelope, key)
        set_started(envelope, started_at)
        set_at(envelope, at)
        return envelope

    return make_envelope


#: ``make_envelope(task_id, kind, value, error, key, started_at, at)``: a
#: :class:`TaskEnvelope`, built faster than by its constructor (the runners' per-task path).
make_envelope = _fast_constructor()


def json_safe(value: object, _depth: int = 0) -> Any:
    """Turn ``value`` into something ``json.dumps`` accepts without loss where possible.

    attrs classes, dataclasses and enums go through the converter; mappings and sequences are
    walked; bytes become base64 text; dates become ISO strings; anything else becomes its
    ``repr``. Non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``.
    """
    if _depth > 64:
        return repr(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, enum.Enum):
        return json_safe(value.value, _depth + 1)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item, _depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, BaseException):
        return error_to_dict(value)
    if attrs.has(type(value)) or hasattr(type(value), "__dataclass_fields__"):
        return json_safe(converter.unstructure(value), _depth + 1)
    return repr(value)


def error_to_dict(error: BaseException) -> dict[str, str]:
    """``{"type": "package.QualName", "message": str(error)}``.

    The type is named by its public path: a class defined in a private module
    (``sluiceway._errors``, ``trio._core._exceptions``) is named after the nearest public package
    that exports it (``sluiceway.TaskTimeoutError``, ``trio.Cancelled``). Builtins are bare.
    """
    if isinstance(error, RemoteTaskError):
        return {"type": error.type_name, "message": error.message}
    return {"type": public_type_name(type(error)), "message": str(error)}


def public_type_name(cls: type) -> str:
    """The public dotted name of ``cls`` (see :func:`error_to_dict`)."""
    module, name = cls.__module__, cls.__qualname__
    if module in ("builtins", "__main__"):
        return name
    parts = module.split(".")
    for depth in range(1, len(parts)):
        if parts[depth].startswith("_"):
            # The first private component: name the class after the package above it if that
            # package exports it, else keep the full path.
            prefix = ".".join(parts[:depth])
            package = sys.modules.get(prefix)
            if package is not None and getattr(package, name, None) is cls:
                return f"{prefix}.{name}"
            break
    return f"{module}.{name}"


def _unstructure_envelope(envelope: TaskEnvelope[Any, Any]) -> dict[str, Any]:
    return {
        "task_id": envelope.task_id,
        "kind": envelope.kind.value,
        "key": json_safe(envelope.key),
        "value": json_safe(envelope.value),
        "error": None if envelope.error is None else error_to_dict(envelope.error),
        "started_at": envelope.started_at,
        "at": envelope.at,
    }


def _structure_envelope(data: Any, _: Any) -> TaskEnvelope[Any, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"an envelope must be a mapping, got {data!r}")
    error = data.get("error")
    return TaskEnvelope(
        task_id=int(data["task_id"]),
        kind=EnvelopeKind(data["kind"]),
        value=data.get("value"),
        error=None
        if error is None
        else RemoteTaskError(str(error.get("type", "Exception")), str(error.get("message", ""))),
        key=data.get("key"),
        started_at=float(data.get("started_at", 0.0)),
        at=float(data.get("at", 0.0)),
    )


#: The cattrs converter for sluiceway's wire types. ``converter.unstructure(envelope)`` gives a
#: JSON-safe dict (the error as ``{"type", "message"}``); ``converter.structure(d, TaskEnvelope)``
#: rebuilds it, with the error as a :class:`~sluiceway.RemoteTaskError`.
converter = cattrs.Converter()
converter.register_unstructure_hook(TaskEnvelope, _unstructure_envelope)
converter.register_structure_hook(TaskEnvelope, _structure_envelope)


def envelope_to_dict(envelope: TaskEnvelope[Any, Any]) -> dict[str, Any]:
    """The JSON-safe dict form of an envelope."""
    return _unstructure_envelope(envelope)


def envelope_from_dict(data: Mapping[str, Any]) -> TaskEnvelope[Any, Any]:
    """Rebuild an envelope from :func:`envelope_to_dict` output."""
    return converter.structure(data, TaskEnvelope)
