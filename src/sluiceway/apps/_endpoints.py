"""What the applications' endpoints share: reading a request body into an attrs class,
strictly, and finding the entity a request names."""

from __future__ import annotations

import typing
from typing import Any

import cattrs

from .._errors import EntityNotFoundError
from ..server import EndpointContext, EndpointError
from ..server._protocol import request_converter

#: The protocol's strict converter, also strict about lists (a string is not a list of tags).
_converter = request_converter.copy()


def _structure_list(value: Any, kind: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    (item,) = typing.get_args(kind) or (Any,)
    return [_converter.structure(element, item) for element in value]


def _is_list(kind: Any) -> bool:
    origin: Any = typing.get_origin(kind)
    return origin is list


_converter.register_structure_hook_func(_is_list, _structure_list)


def parse_body(body: dict[str, Any], cls: type[Any], endpoint: str) -> Any:
    """``body`` as an instance of the attrs class ``cls``, strictly (no conversion of
    types; a string is not a list).

    Raises:
        EndpointError: ``invalid_body``, listing every problem, naming ``endpoint``.
    """
    try:
        return _converter.structure(body, cls)
    except Exception as exc:
        problems = (
            cattrs.transform_error(exc)
            if isinstance(exc, cattrs.BaseValidationError)
            else [str(exc)]
        )
        raise EndpointError(
            "invalid_body", f"invalid {endpoint} body: " + "; ".join(problems), problems
        ) from None


async def fetch_entity(ctx: EndpointContext, entity_id: str, entity_type: str, what: str) -> Any:
    """The entity ``entity_id``, which must be of type ``entity_type``.

    Raises:
        EndpointError: ``<what>_not_found`` when there is none, or it has another type.
    """
    try:
        record = await ctx.runtime.get(entity_id)
    except EntityNotFoundError:
        raise EndpointError(f"{what}_not_found", f"no {what} has the id {entity_id!r}") from None
    if record.type != entity_type:
        raise EndpointError(
            f"{what}_not_found", f"{entity_id!r} is a {record.type}, not a {entity_type}"
        )
    return record
