"""RunnableEntity, WaitableEntity and the registry of entity types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .._errors import ConnectionNotAllowedError, UnknownEntityTypeError
from ..store import EntityRecord

if TYPE_CHECKING:
    from ._context import RunContext

#: The edge type from a parent to the children it calls.
CALLS = "Calls"


class RunnableEntity:
    """An entity whose work is :meth:`run_impl`: subclass it and register the subclass.

    Declare the type with class keywords::

        class Campaign(RunnableEntity, allowed_connections={"Calls": ["Recipient"]}):
            async def run_impl(self, ctx):
                ...

    * ``type_name`` (default: the class name) is stored with every entity and selects the
      class when the entity runs again; keep it stable.
    * ``general_type`` (default: the type name) is a broad category for grouping.
    * ``allowed_connections`` maps an edge type to the types this one may connect to with it.
      Children are created with a ``"Calls"`` edge, so a type that calls children lists them
      under ``"Calls"``. Classes or type names are accepted. Anything not listed is refused
      with :class:`~sluiceway.ConnectionNotAllowedError` naming both types. A subclass
      without the keyword keeps its base class's connections.

    The runtime creates the instance when the entity runs; ``id``, ``name``, ``type_name``,
    ``parent_id``, ``attempt`` and ``data`` (a copy of the stored data, kept up to date by
    ``ctx.update_data``) are set before :meth:`run_impl` is called. Do not give a subclass an
    ``__init__`` with required arguments.
    """

    type_name: ClassVar[str] = "RunnableEntity"
    general_type: ClassVar[str] = "RunnableEntity"
    allowed_connections: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: Whether the type may call ``ctx.wait_for_message`` (set by :class:`WaitableEntity`).
    waitable: ClassVar[bool] = False
    #: Whether entities of the type run (``False`` for a :class:`DataEntity`).
    runnable: ClassVar[bool] = True

    id: str
    name: str
    parent_id: str | None
    attempt: int
    data: dict[str, Any]

    def __init_subclass__(
        cls,
        *,
        type_name: str | None = None,
        general_type: str | None = None,
        allowed_connections: Mapping[str, Iterable[type[RunnableEntity] | str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__name__ if type_name is None else type_name
        if not isinstance(name, str) or not name:
            raise TypeError(f"type_name must be a non-empty string, got {name!r}")
        cls.type_name = name
        general = name if general_type is None else general_type
        if not isinstance(general, str) or not general:
            raise TypeError(f"general_type must be a non-empty string, got {general!r}")
        cls.general_type = general
        if allowed_connections is not None:
            cls.allowed_connections = _normalise_connections(name, allowed_connections)
        # else: inherited from the base class (RunnableEntity allows nothing)

    def _bind(self, record: EntityRecord) -> None:
        self.id = record.id
        self.name = record.name
        self.parent_id = record.parent_id
        self.attempt = record.attempt
        self.data = dict(record.data)

    async def run_impl(self, ctx: RunContext) -> Any:
        """The entity's work. Return its result (JSON), which is stored: the entity is then
        COMPLETED and never runs again. Raise to fail it (it runs again if run again).

        ``ctx`` reports progress (``status``, ``emit``), updates the entity's data, creates and
        runs children (``call``, ``parallel_calls``), connects entities, derives idempotency
        keys and sleeps durably; see :class:`~sluiceway.RunContext`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run_impl(self, ctx)")

    def __repr__(self) -> str:
        ident = getattr(self, "id", None)
        return f"<{self.type_name} {getattr(self, 'name', '?')!r} id={ident}>"


class WaitableEntity(RunnableEntity):
    """A :class:`RunnableEntity` that may wait for messages: ``await ctx.wait_for_message()``.

    Waiting is durable: the WAITING envelope and every message sent are stored, a message sent
    while no process runs the entity is delivered when it runs again, and a timeout still fires
    after a restart. While it waits, the entity gives back the capacity of the runner task it
    runs in; a long wait parks (the run ends, and the message wakes it).
    """

    waitable: ClassVar[bool] = True


class DataEntity(RunnableEntity):
    """An entity that holds data and edges only (a contact, a template): it is stored, read,
    updated and connected like any entity, but never run. Running one raises
    :class:`~sluiceway.EntityNotRunnableError`. Declare it with the same class keywords as a
    :class:`RunnableEntity`::

        class Contact(DataEntity):
            pass
    """

    runnable: ClassVar[bool] = False


def _normalise_connections(
    owner: str, connections: Mapping[str, Iterable[type[RunnableEntity] | str]]
) -> dict[str, tuple[str, ...]]:
    if not isinstance(connections, Mapping):
        raise TypeError(
            f"{owner}: allowed_connections must map an edge type to entity types, "
            f"got {connections!r}"
        )
    out: dict[str, tuple[str, ...]] = {}
    for edge_type, targets in connections.items():
        if not isinstance(edge_type, str) or not edge_type:
            raise TypeError(f"{owner}: an edge type must be a non-empty string, got {edge_type!r}")
        if isinstance(targets, str) or (
            isinstance(targets, type) and issubclass(targets, RunnableEntity)
        ):
            targets = [targets]
        names = []
        for target in targets:
            names.append(type_name_of(target, f"{owner}'s allowed_connections[{edge_type!r}]"))
        out[edge_type] = tuple(names)
    return out


def type_name_of(ref: object, what: str) -> str:
    """The type name an entity class or a name refers to."""
    if isinstance(ref, str) and ref:
        return ref
    if isinstance(ref, type) and issubclass(ref, RunnableEntity):
        return ref.type_name
    raise TypeError(f"{what}: expected a RunnableEntity subclass or a type name, got {ref!r}")


class TypeRegistry:
    """The entity types a runtime knows, by type name."""

    def __init__(self, types: Sequence[type[RunnableEntity]]) -> None:
        self._types: dict[str, type[RunnableEntity]] = {}
        for cls in types:
            if not (isinstance(cls, type) and issubclass(cls, RunnableEntity)):
                raise TypeError(f"types must be RunnableEntity subclasses, got {cls!r}")
            if cls is RunnableEntity or cls is WaitableEntity or cls is DataEntity:
                raise TypeError(f"register subclasses of {cls.__name__}, not the class itself")
            known = self._types.get(cls.type_name)
            if known is not None and known is not cls:
                raise ValueError(
                    f"two entity types are named {cls.type_name!r}: {known.__qualname__} and "
                    f"{cls.__qualname__}; give one a different type_name"
                )
            self._types[cls.type_name] = cls
        for cls in self._types.values():
            for edge_type, targets in cls.allowed_connections.items():
                for target in targets:
                    if target not in self._types:
                        raise UnknownEntityTypeError(
                            f"{cls.type_name} allows {edge_type} to {target!r}, which is not a "
                            f"registered entity type (registered: {self.names()})"
                        )

    def names(self) -> list[str]:
        """The registered type names, sorted."""
        return sorted(self._types)

    def runnable_names(self) -> list[str]:
        """The registered type names whose entities run (not :class:`DataEntity`), sorted."""
        return sorted(name for name, cls in self._types.items() if cls.runnable)

    def get(self, ref: type[RunnableEntity] | str, *, context: str = "") -> type[RunnableEntity]:
        """The class registered for ``ref`` (a class or a type name)."""
        name = type_name_of(ref, "an entity type")
        cls = self._types.get(name)
        if cls is None or (isinstance(ref, type) and cls is not ref):
            where = f"{context}: " if context else ""
            raise UnknownEntityTypeError(
                f"{where}entity type {name!r} is not registered with this runtime "
                f"(registered: {self.names()})"
            )
        return cls

    def check_connection(self, source: str, edge_type: str, target: str) -> None:
        """Raise unless type ``source`` may connect to type ``target`` with ``edge_type``."""
        cls = self._types.get(source)
        allowed = () if cls is None else cls.allowed_connections.get(edge_type, ())
        if target not in allowed:
            listed = (
                f"it allows {edge_type} to {list(allowed)}"
                if allowed
                else f"its allowed_connections has no {edge_type!r} entry"
            )
            raise ConnectionNotAllowedError(
                f"{source} may not connect to {target} with a {edge_type} edge: {listed}; add "
                f"{target!r} to {source}'s allowed_connections[{edge_type!r}]"
            )
