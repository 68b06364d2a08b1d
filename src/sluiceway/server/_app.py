"""Applications: the entity types and endpoints a server serves."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import SluicewayError
from ..entities import RunnableEntity, Runtime
from ..store import EntityRecord

if TYPE_CHECKING:
    from ._server import RuntimeServer


class EndpointError(SluicewayError):
    """An endpoint refused a call: the client gets an ``endpoint_error`` response carrying
    ``code`` (the application's own, e.g. ``"template_not_approved"``), the message and
    ``details``."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@attrs.define
class EndpointContext:
    """What an endpoint gets besides the request body: the runtime, the application's state
    (whatever its ``lifespan`` yielded) and the server (to start runs in it)."""

    runtime: Runtime
    state: Any
    server: RuntimeServer | None = None

    async def start(
        self,
        entity_id: str,
        *,
        data: Mapping[str, Any] | None = None,
        expect: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit an entity for a run, durably, with the checks of the ``start`` operation;
        returns its answer, ``{"entity_id", "state"}`` (``started``, ``running`` or
        ``completed``). The submission is committed before this returns, together with
        ``data`` merged into the entity's data, and only if each key of ``expect`` has that
        value (so ``expect={"status": "draft"}, data={"status": "executing"}`` starts a
        campaign once, and its status never says executing without its run).

        Raises:
            RuntimeError: there is no server (the endpoint was called directly).
            DataConflictError: ``expect`` did not hold (nothing was written).
            EntityNotFoundError, EntityCancelledError, EntityNotRunnableError,
            UnknownEntityTypeError, ProtocolError (``shutting_down``): as for the ``start``
            operation (the client gets its error code).
        """
        if self.server is None:
            raise RuntimeError("start() needs a server: this endpoint was called without one")
        return await self.server.start(entity_id, data=data, expect=expect)


#: An endpoint: ``async def endpoint(ctx, body) -> result`` (``body`` and the result are JSON).
Endpoint = Callable[[EndpointContext, dict[str, Any]], Awaitable[Any]]


def _no_lifespan(runtime: Runtime) -> contextlib.AbstractAsyncContextManager[Any]:
    return contextlib.nullcontext()


#: Which entities the protocol's ``start`` operation may start: entity types (classes or type
#: names), or a predicate on the entity's record; ``None`` for every one.
Startable = Collection[type[RunnableEntity] | str] | Callable[[EntityRecord], bool] | None


@attrs.define
class Application:
    """An application a server serves: a name, its entity types, its endpoints and an
    optional ``lifespan``.

    ``lifespan(runtime)`` is an async context manager entered by :meth:`running` (which
    ``sluiceway serve`` enters around its server, with the runtime open; so does a program
    serving the application itself, passing what it yields as the server's ``state``). What
    it yields is ``ctx.state`` in every endpoint and in every run (HTTP clients, shared
    capacity, configuration...); it is left when the server stops. Endpoints are called with
    ``call`` requests by name (``"campaigns/execute"``)::

        app = Application("crm", types=[Campaign, Recipient], startable=[Recipient])

        @app.endpoint("campaigns/execute")
        async def execute(ctx, body):
            ...
            await ctx.start(campaign.id, expect={"status": "draft"})
            return {"entity_id": campaign.id}

    ``startable`` says which entities a client may start with the protocol's generic
    ``start`` operation (``sluiceway run``): entity types (classes or type names), or a
    predicate on the entity's :class:`~sluiceway.EntityRecord`; ``None`` (the default) lets
    it start every runnable entity. An entity that only an endpoint should start (a campaign,
    which ``campaigns/execute`` checks and prepares first) is left out: ``start`` then refuses
    to begin its run (``not_runnable``, with ``details.startable`` false), and still answers
    ``completed`` or ``running`` for one that has completed, or whose run an endpoint began,
    so that ``sluiceway run`` can follow it. Endpoints start anything (``ctx.start``).
    """

    name: str
    types: Sequence[type[RunnableEntity]]
    endpoints: dict[str, Endpoint] = attrs.field(factory=dict)
    lifespan: Callable[[Runtime], contextlib.AbstractAsyncContextManager[Any]] = _no_lifespan
    startable: Startable = None
    _may_start: Callable[[EntityRecord], bool] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"an application name is a non-empty string, got {self.name!r}")
        for path, function in self.endpoints.items():
            _check_endpoint(path, function)
        self._may_start = _startable_predicate(self.startable, self.types, self.name)

    def may_start(self, record: EntityRecord) -> bool:
        """Whether the protocol's ``start`` operation may begin a run of ``record`` (see
        ``startable``)."""
        return self._may_start(record)

    def endpoint(self, path: str) -> Callable[[Endpoint], Endpoint]:
        """Register the decorated coroutine function as the endpoint ``path``."""

        def register(function: Endpoint) -> Endpoint:
            _check_endpoint(path, function)
            if path in self.endpoints:
                raise ValueError(f"{self.name} has an endpoint {path!r} already")
            self.endpoints[path] = function
            return function

        return register

    @contextlib.asynccontextmanager
    async def running(self, runtime: Runtime) -> AsyncIterator[Any]:
        """Enter the application's lifespan; yields its state, which is also
        ``runtime.state`` (``ctx.state`` in runs) until it is left."""
        async with self.lifespan(runtime) as state:
            previous, runtime.state = runtime.state, state
            try:
                yield state
            finally:
                runtime.state = previous


def _startable_predicate(
    startable: Startable, types: Sequence[type[RunnableEntity]], app: str
) -> Callable[[EntityRecord], bool]:
    if startable is None:
        return lambda record: True
    if callable(startable) and not isinstance(startable, type):
        return startable
    if isinstance(startable, str | type) or not isinstance(startable, Collection):
        raise TypeError(
            "startable is a collection of entity types or type names, a predicate on an "
            f"entity record, or None; got {startable!r}"
        )
    known = {cls.type_name for cls in types}
    names = set()
    for item in startable:
        if isinstance(item, type) and issubclass(item, RunnableEntity):
            name = item.type_name
        elif isinstance(item, str):
            name = item
        else:
            raise TypeError(f"startable names entity types (classes or names), got {item!r}")
        if name not in known:
            raise ValueError(f"startable names {name!r}, which is not a type of {app}")
        names.add(name)
    allowed = frozenset(names)
    return lambda record: record.type in allowed


def _check_endpoint(path: object, function: object) -> None:
    if not isinstance(path, str) or not path or path != path.strip():
        raise ValueError(f"an endpoint path is a non-empty string, got {path!r}")
    if not callable(function):
        raise TypeError(f"endpoint {path!r} must be an async function, got {function!r}")


def load_app(spec: str) -> Application:
    """The application named by ``"package.module:name"`` (an :class:`Application`, or a
    function without arguments that returns one).

    Raises:
        ValueError: the spec is malformed, or names something that is not an application.
        ImportError: the module cannot be imported.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"an application is named MODULE:NAME (e.g. myapp.crm:app), got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        target: Any = module
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, Application) and callable(target):
        try:
            inspect.signature(target).bind()
        except TypeError:
            raise ValueError(
                f"{spec} is neither an Application nor a function without arguments that "
                "returns one"
            ) from None
        except ValueError:
            pass  # no signature to check (a builtin): call it and see
        target = target()
    if not isinstance(target, Application):
        raise ValueError(f"{spec} is not a sluiceway Application (got {type(target).__name__})")
    return target
