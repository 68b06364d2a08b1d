"""The live progress display of a run: counts by type and status, a bar of the children
finished, and the latest messages (``sluiceway run`` and the demo)."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import IO, Any

import attrs
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..entities import EntityEnvelope

#: Lifecycle statuses, in the order the display lists them.
STATES = ("pending", "running", "waiting", "completed", "failed", "cancelled")
_LIFECYCLE = {
    "STARTED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
}
_STYLE = {
    "running": "cyan",
    "waiting": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "pending": "dim",
}


#: The width of a console that is not a terminal: no line is cut or wrapped.
_UNBOUNDED = 100_000


def display_console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
    """A console for the live display and what follows it (on stdout, ``stderr``, or
    ``file``). On a terminal, rich redraws the display in place, fitted to its width;
    written to a file or a pipe, the display is printed once, when it ends, and no line is
    wrapped or cut at 80 columns (a result's JSON stays on one line)."""
    console = Console(stderr=stderr, file=file)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, file=file, width=_UNBOUNDED, soft_wrap=True)


def failed_result(value: Any) -> bool:
    """Whether a run's result is its application's verdict of failure: a JSON object whose
    ``status`` is ``"failed"`` (a campaign none of whose emails went out, a recipient whose
    address bounced). Its entity is COMPLETED, but the display and ``sluiceway run`` count
    it as failed."""
    return isinstance(value, dict) and value.get("status") == "failed"


@attrs.frozen
class _View:
    """What the display shows at one refresh: every count comes from this one moment."""

    root_type: str
    root_name: str
    root_state: str
    envelopes: int
    last_seq: int
    by_type: dict[str, collections.Counter[str]]
    finished: tuple[int, int | None]
    messages: tuple[str, ...]


class RunProgress:
    """What is known of a run from its envelopes (and, when given, the store's counts of the
    root's children): build it, feed it with :meth:`add`, show :meth:`render`.

    Once the store's counts are given (:meth:`set_children`), the display shows the run as
    it was at the last of them: the counts by type, the bar and the messages all as of that
    moment, so that they agree with one another (give the counts again at each refresh, and
    once more after the run ended). An entity whose run completed with a failed result (see
    :func:`failed_result`) counts as failed. The clock stops when the root's run ends.
    """

    def __init__(self, root_id: str, *, messages: int = 8) -> None:
        self.root_id = root_id
        self.root_name = root_id
        self.root_type = ""
        self.root_state = "pending"
        self.states: dict[str, tuple[str, str]] = {}  # entity id -> (type, state)
        self.children: dict[str, int] = {}  # the root's children by stored status
        self.total: int | None = None  # the root's own "total" (STATUS metadata), if any
        self.messages: collections.deque[str] = collections.deque(maxlen=messages)
        self.envelopes = 0
        self.last_seq = 0
        self.result: Any = None
        self.started = time.monotonic()
        self.ended: float | None = None  # when the root's run was seen to end
        self._run_ts: tuple[float | None, float | None] = (None, None)  # its start, end (ts)
        self._failed_results: set[str] = set()  # entities whose result says failed
        self._shown: _View | None = None  # the view as of the last set_children

    def add(self, envelope: EntityEnvelope) -> None:
        """Account for one envelope."""
        self.envelopes += 1
        self.last_seq = max(self.last_seq, envelope.seq)
        is_root = envelope.entity_id == self.root_id
        if is_root:
            self.root_name, self.root_type = envelope.entity_name, envelope.entity_type
        state = None
        if envelope.type == "STATUS" and envelope.status in _LIFECYCLE:
            state = _LIFECYCLE[envelope.status]
            if state == "completed" and envelope.entity_id in self._failed_results:
                state = "failed"
        elif envelope.type == "WAITING":
            state = "waiting"
        elif envelope.type == "MESSAGE":
            state = "running"
        if state is not None:
            if is_root:
                self.root_state = state
                began, _ = self._run_ts
                if state not in ("completed", "failed", "cancelled"):
                    self.ended = None  # running (again, after a failure or a crash)
                    if envelope.status == "STARTED" and began is None:
                        self._run_ts = (envelope.ts, None)
                elif self.ended is None:
                    self.ended = time.monotonic()
                    self._run_ts = (began, envelope.ts)
            else:
                self.states[envelope.entity_id] = (envelope.entity_type, state)
        who = envelope.entity_name
        if envelope.type == "STATUS" and envelope.status not in _LIFECYCLE and envelope.message:
            self.messages.append(f"{who}: {envelope.message}")
            total = envelope.metadata.get("total") if is_root else None
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                self.total = total
        elif envelope.type == "ERROR":
            error = envelope.error or {}
            self.messages.append(f"✗ {who}: {error.get('type')}: {error.get('message')}")
        elif envelope.type == "WAITING":
            self.messages.append(f"{who} waits: {envelope.message or ''}".rstrip(": "))
        elif envelope.type == "VALUE" and envelope.sub_type == "return":
            if failed_result(envelope.value):
                self._failed_results.add(envelope.entity_id)
            else:
                self._failed_results.discard(envelope.entity_id)
            if is_root:
                self.result = envelope.value

    def set_children(self, by_status: Mapping[str, int]) -> None:
        """The store's counts of the root's children by status (from a ``tree`` request):
        the display shows the run as it is now, until the next call."""
        self.children = dict(by_status)
        self._shown = self._view()

    def by_type(self) -> dict[str, collections.Counter[str]]:
        """Descendants (not the root) by type, then lifecycle state."""
        out: dict[str, collections.Counter[str]] = {}
        for entity_type, state in self.states.values():
            out.setdefault(entity_type, collections.Counter())[state] += 1
        return out

    def finished(self) -> tuple[int, int | None]:
        """``(finished, total)`` of the root's children (total ``None`` while unknown)."""
        if self.children:
            done = sum(
                count
                for status, count in self.children.items()
                if status in ("COMPLETED", "FAILED", "CANCELLED")
            )
            known = sum(self.children.values())
        else:  # no counts from the store: the descendants seen to finish
            done = sum(
                1
                for _, state in self.states.values()
                if state in ("completed", "failed", "cancelled")
            )
            known = len(self.states)
        total = max(self.total, known) if self.total is not None else (known or None)
        return done, total

    def elapsed(self) -> float:
        """Seconds since this display began, until the root's run ended; once it ended, how
        long the run took (by its envelopes' times) if its start was seen."""
        began, ended = self._run_ts
        if self.ended is not None and began is not None and ended is not None:
            return max(ended - began, 0.0)
        end = self.ended if self.ended is not None else time.monotonic()
        return end - self.started

    def _view(self) -> _View:
        return _View(
            root_type=self.root_type,
            root_name=self.root_name,
            root_state=self.root_state,
            envelopes=self.envelopes,
            last_seq=self.last_seq,
            by_type=self.by_type(),
            finished=self.finished(),
            messages=tuple(self.messages),
        )

    def render(self) -> RenderableType:
        """The display, for :class:`rich.live.Live`."""
        view = self._shown or self._view()
        header = Text.assemble(
            (f"{view.root_type or 'entity'} ", "bold"),
            (view.root_name, "bold cyan"),
            "  ",
            (view.root_state.upper(), _STYLE.get(view.root_state, "")),
            f"  {self.elapsed():5.1f}s  {view.envelopes} envelopes (seq {view.last_seq})",
        )
        table = Table(box=None, pad_edge=False, show_edge=False)
        table.add_column("type", style="bold")
        for state in STATES[1:]:
            table.add_column(state, justify="right", style=_STYLE[state])
        for entity_type, counts in sorted(view.by_type.items()):
            table.add_row(entity_type, *(str(counts.get(state, 0)) for state in STATES[1:]))
        done, total = view.finished
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=float(total or 1), completed=float(done), width=40),
            f"{done}/{total if total is not None else '?'} children finished",
        )
        lines = Text("\n".join(view.messages) or "(no messages yet)", style="dim")
        return Group(header, table, bar, Text("latest:", style="bold"), lines, Text(""))

    def summary(self) -> str:
        """One line on how the run ended."""
        done, total = self.finished()
        counts = ", ".join(
            f"{entity_type}: " + " ".join(f"{n} {state}" for state, n in sorted(counter.items()))
            for entity_type, counter in sorted(self.by_type().items())
        )
        return (
            f"{self.root_type} {self.root_name} {self.root_state.upper()}: "
            f"{done}/{total if total is not None else '?'} children finished"
            + (f" ({counts})" if counts else "")
        )
