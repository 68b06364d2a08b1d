"""What a runtime keeps of the runs it holds, and how it judges owners and exceptions."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import attrs
import trio

from .._errors import (
    EntityCancelledError,
    EntityError,
    EntityFailedError,
    EntityNotRunnableError,
    RunParked,
)
from ..store import EntityRecord

_TRIO_DIR = os.path.dirname(trio.__file__)


@attrs.frozen
class RecoveredRun:
    """What :meth:`Runtime.recover` did with one run it resumed: its entity, and its result,
    the error that ended it, or ``parked`` (it waits durably again)."""

    entity_id: str
    entity_type: str
    entity_name: str
    result: Any = None
    error: BaseException | None = None
    parked: bool = False


class LiveRun:
    """A run of an entity in this runtime: how to cancel it, wake it, and wait for it.

    ``own_run`` says whether it runs on its own (started by ``run``, ``start`` or the claim
    loop: if it is interrupted it is due again at once), rather than inside its parent's run
    (then the parent runs it again). ``from_loop``: the claim loop (or ``recover``) claimed it.
    """

    def __init__(self, record: EntityRecord, *, own_run: bool = False) -> None:
        self.record = record
        self.own_run = own_run
        self.from_loop = False
        self.scope: trio.CancelScope | None = None
        self.cancelled = False  # cancelled on request (runtime.cancel, here or elsewhere)
        self.lease_lost = False  # another runtime took the entity over
        self.done = trio.Event()
        self.claimed = False  # it holds the entity's lease (set once its claim succeeded)
        self.ran = False  # it claimed the entity and ran (result or error is its outcome)
        self.parking = False  # it decided to park (its park may be committing)
        self.parked = False  # it ended by parking: the store wakes it later
        self.proven = False  # a run on probation lived long enough (see ClaimLoop)
        self.result: Any = None
        self.error: BaseException | None = None
        self.wakeup = trio.Event()  # set (and replaced) when a message arrives

    def wake(self) -> None:
        self.wakeup.set()
        self.wakeup = trio.Event()

    def cancel(self, *, lease_lost: bool = False) -> None:
        if lease_lost:
            self.lease_lost = True
        else:
            self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def outcome(self) -> Any:
        """The ended run's result, or (a copy of) what ended it; :class:`RunParked` if it
        parked."""
        if self.parked:
            record = self.record
            raise RunParked(f"{record.type} {record.name!r} ({record.id}) parked")
        if self.error is not None:
            raise copy_error(self.error)
        return self.result


def copy_error(error: BaseException) -> BaseException:
    """A fresh exception equal to ``error`` for another waiter (one object is raised once)."""
    if isinstance(error, EntityFailedError):
        copy: BaseException = EntityFailedError(
            error.entity_id, error.entity_type, error.entity_name, error.error
        )
    elif isinstance(error, EntityCancelledError):
        copy = EntityCancelledError(error.entity_id, error.entity_type, error.entity_name)
    else:
        copy = EntityError(str(error))
    copy.__cause__ = error
    return copy


def check_runnable(runnable: bool, type_name: str, name: str, entity_id: str) -> None:
    """Raise :class:`~sluiceway.EntityNotRunnableError` for an entity that never runs."""
    if not runnable:
        raise EntityNotRunnableError(
            f"{type_name} {name!r} ({entity_id}) is a DataEntity: it holds data and is never run"
        )


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is trio's cancellation (alone, or in a group)."""
    if isinstance(error, trio.Cancelled):
        return True
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(trio.Cancelled) is not None
    return False


def from_a_signal(error: BaseException) -> bool:
    """Whether ``error`` is a ``KeyboardInterrupt`` that trio raised for a real SIGINT (its
    innermost frame is trio's), rather than one that code raised itself."""
    if not isinstance(error, KeyboardInterrupt):
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_TRIO_DIR)


def only_parked(error: BaseException) -> RunParked | None:
    """``error`` if it is :class:`RunParked`, or a group made only of ``RunParked`` (a
    nursery of the run whose tasks parked): the one to report; else ``None``."""
    if isinstance(error, RunParked):
        return error
    if isinstance(error, BaseExceptionGroup):
        parked, rest = error.split(RunParked)
        if parked is not None and rest is None:
            first: BaseException = parked
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            assert isinstance(first, RunParked)
            return first
    return None


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` names a process of this machine that no longer exists.

    Owners are ``host:pid:random``. Only processes of this host can be checked; any other
    owner counts as alive (its lease must expire).
    """
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # another runtime of this process: it releases its leases when it stops
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether the process exited and only waits to be reaped by its parent (Linux: its
    state in ``/proc/<pid>/stat`` is ``Z``); its pid exists, but it runs nothing any more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (command) state ...": the command may hold spaces and parentheses.
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def new_owner() -> str:
    """A new owner id: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
