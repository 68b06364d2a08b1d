"""DependencyGraph: transitions, abort cascades, retry release, listeners, and random invariants."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluiceway._errors import CycleError, DependencyError, InvalidTransitionError
from sluiceway.sources._graph import DependencyGraph, NodeState

PENDING = NodeState.PENDING
READY = NodeState.READY
RUNNING = NodeState.RUNNING
COMPLETED = NodeState.COMPLETED
FAILED = NodeState.FAILED
ABORTED = NodeState.ABORTED


class Recorder:
    """Records every event of a graph as ``(kind, key)``."""

    def __init__(self, graph: DependencyGraph[str]) -> None:
        self.events: list[tuple[str, str]] = []
        self.unsubscribe = graph.subscribe(
            on_ready=lambda key: self.events.append(("ready", key)),
            on_complete=lambda key: self.events.append(("complete", key)),
            on_abort=lambda key: self.events.append(("abort", key)),
        )

    def take(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events


def snapshot(graph: DependencyGraph[str]) -> object:
    """Everything observable about a graph's structure and states."""
    return (
        [
            (key, graph.get_state(key), graph.dependencies(key), graph.dependents(key))
            for key in graph
        ],
        [
            list(view)
            for view in (
                graph.pending,
                graph.ready,
                graph.running,
                graph.completed,
                graph.failed,
                graph.aborted,
            )
        ],
        graph.next_due(),
        len(graph),
        graph.is_done,
        repr(graph),
    )


def run(graph: DependencyGraph[str], key: str) -> list[str] | None:
    graph.start(key)
    return graph.complete(key)


def done(graph: DependencyGraph[str]) -> bool:
    """``graph.is_done``, read through a call so mypy does not narrow it between transitions."""
    return graph.is_done


def diamond() -> DependencyGraph[str]:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_node("A")
    graph.add_node("B", ["A"])
    graph.add_node("C", ["A"])
    graph.add_node("D", ["B", "C"])
    return graph


# -- building ---------------------------------------------------------------------------------


def test_empty_graph_is_done() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    assert graph.is_done
    assert len(graph) == 0
    assert list(graph) == []
    assert graph.topological_sort() == []
    assert not graph.has_cycle()
    assert graph.next_due() is None
    assert repr(graph) == "<DependencyGraph nodes=0>"


def test_add_node_initial_states_and_queries() -> None:
    graph = diamond()
    assert graph.get_state("A") is READY
    assert [graph.get_state(key) for key in "BCD"] == [PENDING] * 3
    assert graph.dependencies("D") == ["B", "C"]
    assert graph.dependents("A") == ["B", "C"]
    assert graph.dependents("D") == []
    assert list(graph.ready) == ["A"]
    assert list(graph.pending) == ["B", "C", "D"]
    assert "A" in graph
    assert "Z" not in graph
    assert list(graph) == ["A", "B", "C", "D"]
    assert len(graph) == 4
    assert not graph.is_done
    assert repr(graph) == "<DependencyGraph nodes=4, pending=3, ready=1>"
    assert graph.is_ready("A")
    assert not graph.is_ready("B")
    assert not graph.is_ready("Z")  # an unknown key is not ready (no error)
    graph.start("A")
    assert not graph.is_ready("A")


def test_add_node_errors_name_the_key() -> None:
    graph = diamond()
    with pytest.raises(DependencyError, match="duplicate key: 'A'"):
        graph.add_node("A")
    with pytest.raises(DependencyError, match="'E' depends on unknown key 'Z'"):
        graph.add_node("E", ["A", "Z"])
    with pytest.raises(CycleError, match="'E' depends on itself") as info:
        graph.add_node("E", ["A", "E"])
    assert info.value.cycle == ["E", "E"]
    assert isinstance(info.value, DependencyError)
    with pytest.raises(TypeError, match="not a string"):
        graph.add_node("E", "A")
    assert "E" not in graph
    assert graph.dependents("A") == ["B", "C"]


def test_repeated_dependency_counts_once() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_node("a")
    graph.add_node("b", ["a", "a"])
    assert graph.dependencies("b") == ["a"]
    assert graph.dependents("a") == ["b"]
    assert run(graph, "a") == ["b"]


def test_node_added_on_completed_dependencies_is_ready_and_fires_inside_add_node() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)
    graph.add_node("a")
    assert recorder.take() == [("ready", "a")]
    run(graph, "a")
    recorder.take()
    assert graph.is_done
    assert graph.add_node("b", ["a"]) is READY  # added after the graph was done
    assert recorder.take() == [("ready", "b")]
    assert not graph.is_done


def test_node_added_on_an_aborted_dependency_is_aborted_at_once() -> None:
    graph = diamond()
    recorder = Recorder(graph)
    assert graph.abort("C") == ["C", "D"]
    recorder.take()
    assert graph.add_node("E", ["B", "C"]) is ABORTED
    assert recorder.take() == [("abort", "E")]
    assert graph.add_node("F", ["E"]) is ABORTED
    assert graph.add_all({"G": ["F"], "H": ["A"]}) == {"G": ABORTED, "H": PENDING}
    assert recorder.take() == [("abort", "F"), ("abort", "G")]


def test_add_all_in_reverse_order() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)
    states = graph.add_all({"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []})
    assert list(states) == ["d", "c", "b", "a"]  # the mapping's order
    assert states == {"d": PENDING, "c": PENDING, "b": PENDING, "a": READY}
    # Inserted earliest-in-the-mapping first among those whose dependencies are in.
    assert list(graph) == ["a", "c", "b", "d"]
    assert graph.topological_sort() == ["a", "c", "b", "d"]
    assert graph.dependents("a") == ["c", "b"]
    assert recorder.take() == [("ready", "a")]


def test_add_all_with_dependencies_already_in_the_graph() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)
    graph.add_node("root")
    run(graph, "root")
    recorder.take()
    states = graph.add_all({"y": ["x", "root"], "x": ["root"], "z": []})
    assert states == {"y": PENDING, "x": READY, "z": READY}
    assert list(graph) == ["root", "x", "y", "z"]
    assert recorder.take() == [("ready", "x"), ("ready", "z")]  # insertion order
    assert list(graph.ready) == ["x", "z"]


@given(st.integers(min_value=2, max_value=30), st.randoms(use_true_random=False))
def test_add_all_in_random_order(size: int, rng: random.Random) -> None:
    keys = [f"n{i}" for i in range(size)]
    deps = {key: rng.sample(keys[:i], rng.randint(0, min(i, 3))) for i, key in enumerate(keys)}
    shuffled = list(keys)
    rng.shuffle(shuffled)
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)
    states = graph.add_all({key: deps[key] for key in shuffled})
    assert list(states) == shuffled
    assert sorted(graph) == sorted(keys)
    position = {key: i for i, key in enumerate(graph.topological_sort())}
    assert all(position[d] < position[k] for k in keys for d in deps[k])
    assert {key for key, state in states.items() if state is READY} == {
        k for k in keys if not deps[k]
    }
    assert [key for kind, key in recorder.take()] == [k for k in graph if not deps[k]]
    assert not graph.has_cycle()
    # Running everything in ready order completes the graph.
    while graph.ready:
        run(graph, next(iter(graph.ready)))
    assert graph.is_done
    assert len(graph.completed) == size


def test_add_all_cycle_leaves_the_graph_unchanged() -> None:
    graph = diamond()
    run(graph, "A")
    recorder = Recorder(graph)
    before = snapshot(graph)
    with pytest.raises(CycleError) as info:
        graph.add_all({"z": ["B"], "a": ["b", "A"], "b": ["c"], "c": ["a"], "e": []})
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert sorted(map(str, cycle[:-1])) == ["a", "b", "c"]
    assert cycle == ["a", "b", "c", "a"]  # each key depends on the next
    assert "'a' -> 'b' -> 'c' -> 'a'" in str(info.value)
    assert snapshot(graph) == before
    assert recorder.take() == []


def test_add_all_rejections_leave_the_graph_unchanged() -> None:
    graph = diamond()
    recorder = Recorder(graph)
    before = snapshot(graph)
    with pytest.raises(DependencyError, match="duplicate key: 'B'"):
        graph.add_all({"x": [], "B": []})
    with pytest.raises(DependencyError, match="'y' depends on unknown key 'nowhere'"):
        graph.add_all({"x": [], "y": ["x", "nowhere"]})
    with pytest.raises(CycleError, match="'x' depends on itself"):
        graph.add_all({"w": [], "x": ["x"]})
    with pytest.raises(TypeError, match="not a string"):
        graph.add_all({"w": [], "x": "A"})

    def broken() -> list[str]:
        raise OSError("boom")

    with pytest.raises(OSError, match="boom"):
        graph.add_all({"w": [], "x": (key for key in broken())})
    assert snapshot(graph) == before
    assert recorder.take() == []
    assert graph.add_all({}) == {}


# -- transitions ------------------------------------------------------------------------------


def test_diamond_abort_cascades_to_c_and_d_only() -> None:
    graph = diamond()
    recorder = Recorder(graph)
    assert run(graph, "A") == ["B", "C"]
    assert recorder.take() == [("complete", "A"), ("ready", "B"), ("ready", "C")]
    graph.start("B")
    assert graph.abort("C") == ["C", "D"]
    assert recorder.take() == [("abort", "C"), ("abort", "D")]
    assert graph.get_state("B") is RUNNING
    assert not done(graph)
    assert graph.complete("B") == []  # D is aborted, not made ready
    assert recorder.take() == [("complete", "B")]
    assert graph.is_done
    assert list(graph.completed) == ["A", "B"]
    assert list(graph.aborted) == ["C", "D"]


def test_abort_is_breadth_first_and_skips_completed_and_aborted() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_all({"r": [], "a": ["r"], "b": ["r"], "a1": ["a"], "b1": ["b"], "x": ["a1", "b1"]})
    assert graph.abort("r") == ["r", "a", "b", "a1", "b1", "x"]
    assert graph.abort("r") == []
    assert graph.abort("x") == []
    done = diamond()
    run(done, "A")
    before = snapshot(done)
    assert done.abort("A") == []  # COMPLETED: nothing changes
    assert snapshot(done) == before


def test_abort_works_in_every_live_state() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_all({"p0": [], "pending": ["p0"], "ready": [], "running": [], "failed": []})
    graph.start("running")
    graph.start("failed")
    graph.fail("failed", retry_at=5.0)
    states = {key: graph.get_state(key) for key in graph}
    assert states == {
        "p0": READY,
        "pending": PENDING,
        "ready": READY,
        "running": RUNNING,
        "failed": FAILED,
    }
    for key in ["pending", "ready", "running", "failed"]:
        assert graph.abort(key) == [key]
        assert graph.get_state(key) is ABORTED
    assert list(graph.failed) == []
    assert graph.next_due() is None
    assert graph.release_due(10.0) == []


def test_complete_and_fail_on_an_aborted_node_are_reported_no_ops() -> None:
    graph = diamond()
    graph.start("A")
    recorder = Recorder(graph)
    assert graph.abort("A") == ["A", "B", "C", "D"]
    recorder.take()
    before = snapshot(graph)
    assert graph.complete("A") is None
    assert graph.fail("A") is False
    assert graph.fail("A", retry_at=3.0) is False
    assert graph.complete("D") is None  # aborted while pending: also a no-op
    assert snapshot(graph) == before
    assert recorder.take() == []
    with pytest.raises(InvalidTransitionError, match="cannot start 'A': it is ABORTED, not READY"):
        graph.start("A")


def test_invalid_transitions_name_key_and_state() -> None:
    graph = diamond()
    with pytest.raises(InvalidTransitionError, match="cannot complete 'A': it is READY"):
        graph.complete("A")
    with pytest.raises(InvalidTransitionError, match="cannot fail 'A': it is READY"):
        graph.fail("A")
    with pytest.raises(InvalidTransitionError, match="cannot start 'B': it is PENDING"):
        graph.start("B")
    graph.start("A")
    with pytest.raises(InvalidTransitionError, match="cannot start 'A': it is RUNNING"):
        graph.start("A")
    graph.complete("A")
    with pytest.raises(InvalidTransitionError, match="cannot complete 'A': it is COMPLETED"):
        graph.complete("A")
    assert isinstance(InvalidTransitionError("x"), RuntimeError)
    for call in (
        lambda: graph.start("Z"),
        lambda: graph.complete("Z"),
        lambda: graph.fail("Z"),
        lambda: graph.abort("Z"),
        lambda: graph.get_state("Z"),
        lambda: graph.dependencies("Z"),
        lambda: graph.dependents("Z"),
    ):
        with pytest.raises(DependencyError, match="unknown key 'Z'"):
            call()


def test_fail_without_delay_is_ready_again_at_the_back() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)
    graph.add_all({"a": [], "b": []})
    recorder.take()
    graph.start("a")
    assert graph.fail("a") is True
    assert recorder.take() == [("ready", "a")]
    assert list(graph.ready) == ["b", "a"]


def test_fail_with_retry_at_and_release_order() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)
    graph.add_all({key: [] for key in "abcde"})
    for key in "abcde":
        graph.start(key)
    recorder.take()
    assert graph.fail("a", retry_at=5.0)
    assert graph.fail("b", retry_at=2.0)
    assert graph.fail("c", retry_at=5.0)
    assert graph.fail("d", retry_at=1)
    assert recorder.take() == []  # nothing is ready until released
    assert list(graph.failed) == ["a", "b", "c", "d"]
    assert graph.get_state("a") is FAILED
    assert not graph.is_done
    assert graph.next_due() == 1.0
    assert graph.release_due(0.5) == []
    assert graph.release_due(2.0) == ["d", "b"]
    assert recorder.take() == [("ready", "d"), ("ready", "b")]
    assert graph.next_due() == 5.0
    assert graph.abort("a") == ["a"]
    assert graph.next_due() == 5.0  # c is still due then
    recorder.take()
    graph.fail("e", retry_at=5.0)
    assert graph.release_due(100.0) == ["c", "e"]  # tie at 5.0: in the order they failed
    assert recorder.take() == [("ready", "c"), ("ready", "e")]
    assert graph.next_due() is None
    assert list(graph.ready) == ["d", "b", "c", "e"]


def test_a_released_node_can_fail_again() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_node("a")
    graph.start("a")
    graph.fail("a", retry_at=1.0)
    assert graph.release_due(1.0) == ["a"]  # due exactly at retry_at
    graph.start("a")
    graph.fail("a", retry_at=3.0)
    assert graph.next_due() == 3.0
    assert graph.release_due(2.0) == []
    assert graph.release_due(3.0) == ["a"]
    graph.start("a")
    graph.complete("a")
    assert graph.is_done


def test_fail_validates_retry_at() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_node("a")
    graph.start("a")
    with pytest.raises(ValueError, match="NaN"):
        graph.fail("a", retry_at=float("nan"))
    with pytest.raises(TypeError, match="retry_at"):
        graph.fail("a", retry_at="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        graph.release_due(float("nan"))
    assert graph.get_state("a") is RUNNING


def test_many_aborted_retries_do_not_accumulate() -> None:
    graph: DependencyGraph[int] = DependencyGraph()
    graph.add_all({i: [] for i in range(500)})
    for i in range(500):
        graph.start(i)
        graph.fail(i, retry_at=float(1000 - i))
    for i in range(499):
        graph.abort(i)
    assert len(graph._retry_heap) < 100
    assert graph.next_due() == 501.0
    assert graph.release_due(10_000) == [499]


# -- listeners --------------------------------------------------------------------------------


def test_several_listeners_in_subscription_order_and_unsubscribe() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    calls: list[str] = []
    first = graph.subscribe(on_ready=lambda key: calls.append(f"1 ready {key}"))
    graph.subscribe(
        on_ready=lambda key: calls.append(f"2 ready {key}"),
        on_complete=lambda key: calls.append(f"2 complete {key}"),
    )
    graph.subscribe(on_abort=lambda key: calls.append(f"3 abort {key}"))
    graph.add_node("a")
    graph.add_node("b", ["a"])
    run(graph, "a")
    assert calls == ["1 ready a", "2 ready a", "2 complete a", "1 ready b", "2 ready b"]
    calls.clear()
    first()
    first()  # idempotent
    graph.add_node("c")
    graph.abort("c")
    assert calls == ["2 ready c", "3 abort c"]


def test_subscribe_rejects_nothing_and_non_callables() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    with pytest.raises(TypeError, match="at least one"):
        graph.subscribe()
    with pytest.raises(TypeError, match="on_abort must be callable"):
        graph.subscribe(on_abort=42)  # type: ignore[arg-type]


def test_one_listener_error_is_raised_bare_after_the_transition() -> None:
    graph = diamond()
    seen: list[tuple[str, NodeState]] = []

    def bad(key: str) -> None:
        if key == "B":
            raise KeyError(f"listener saw {key}")

    graph.subscribe(on_ready=bad)
    graph.subscribe(on_ready=lambda key: seen.append((key, graph.get_state("D"))))
    graph.start("A")
    with pytest.raises(KeyError, match="listener saw B"):
        graph.complete("A")
    # The transition was fully applied and the other listener saw both events.
    assert graph.get_state("A") is COMPLETED
    assert list(graph.ready) == ["B", "C"]
    assert seen == [("B", PENDING), ("C", PENDING)]


def test_several_listener_errors_are_raised_as_a_group() -> None:
    graph = diamond()
    reached: list[str] = []

    def bad(key: str) -> None:
        raise ValueError(key)

    graph.subscribe(on_abort=bad)
    graph.subscribe(on_abort=reached.append)
    with pytest.raises(ExceptionGroup) as info:
        graph.abort("A")
    assert [str(exc) for exc in info.value.exceptions] == ["A", "B", "C", "D"]
    assert all(isinstance(exc, ValueError) for exc in info.value.exceptions)
    assert reached == ["A", "B", "C", "D"]
    assert graph.is_done


def test_listener_error_on_add_node_keeps_the_node() -> None:
    graph: DependencyGraph[str] = DependencyGraph()

    def bad(key: str) -> None:
        raise RuntimeError("no")

    graph.subscribe(on_ready=bad)
    with pytest.raises(RuntimeError, match="no"):
        graph.add_node("a")
    assert graph.get_state("a") is READY
    # The failure does not stick: later transitions deliver normally.
    with pytest.raises(RuntimeError, match="no"):
        graph.add_node("b")
    assert list(graph.ready) == ["a", "b"]


def test_keyboard_interrupt_in_a_listener_propagates_with_earlier_errors() -> None:
    graph: DependencyGraph[str] = DependencyGraph()

    def bad(key: str) -> None:
        raise ValueError(key)

    def interrupt(key: str) -> None:
        if key == "b":
            raise KeyboardInterrupt

    graph.subscribe(on_ready=bad)
    graph.subscribe(on_ready=interrupt)
    with pytest.raises(BaseExceptionGroup) as info:
        graph.add_all({"a": [], "b": [], "c": []})
    kinds = [type(exc) for exc in info.value.exceptions]
    assert kinds == [ValueError, ValueError, KeyboardInterrupt]
    assert list(graph.ready) == ["a", "b", "c"]
    # The undelivered event for c was dropped, and the graph still works.
    graph.add_node("d", ["a"])


def test_unsubscribed_during_delivery_gets_no_further_events() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    got: list[str] = []
    unsubscribe_other: list[Callable[[], None]] = []

    def first(key: str) -> None:
        if key == "b":
            unsubscribe_other[0]()

    graph.subscribe(on_ready=first)
    unsubscribe_other.append(graph.subscribe(on_ready=got.append))
    graph.add_all({"a": [], "b": [], "c": []})
    assert got == ["a"]


def test_reentrant_listener_adding_nodes() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    recorder = Recorder(graph)

    def spawn(key: str) -> None:
        # Each completed "level" node adds its child, which depends on it.
        if key.startswith("level") and int(key[5:]) < 3:
            state = graph.add_node(f"level{int(key[5:]) + 1}", [key])
            assert state is READY  # the dependency is already COMPLETED when we are told
            assert graph.get_state(f"level{int(key[5:]) + 1}") is READY

    graph.subscribe(on_complete=spawn)
    graph.add_node("level0")
    for i in range(4):
        run(graph, f"level{i}")
    assert graph.is_done
    assert list(graph) == ["level0", "level1", "level2", "level3"]
    assert recorder.take() == [
        ("ready", "level0"),
        ("complete", "level0"),
        ("ready", "level1"),
        ("complete", "level1"),
        ("ready", "level2"),
        ("complete", "level2"),
        ("ready", "level3"),
        ("complete", "level3"),
    ]


def test_reentrant_transitions_are_delivered_in_the_order_they_happened() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_all({"a": [], "b": ["a"], "c": ["a"], "d": ["b"]})
    recorder = Recorder(graph)
    log: list[str] = []

    def eager(key: str) -> None:
        # Runs every ready node to completion at once, from inside the notification.
        log.append(f"ready {key} (state {graph.get_state(key).name})")
        if graph.get_state(key) is READY:
            assert run(graph, key) is not None

    graph.subscribe(on_ready=eager)
    graph.start("a")
    assert graph.complete("a") == ["b", "c"]
    assert graph.is_done
    # One history, in order: nested transitions queue behind the events already waiting.
    assert recorder.take() == [
        ("complete", "a"),
        ("ready", "b"),
        ("ready", "c"),
        ("complete", "b"),
        ("ready", "d"),
        ("complete", "c"),
        ("complete", "d"),
    ]
    assert log == ["ready b (state READY)", "ready c (state READY)", "ready d (state READY)"]


def test_a_listener_aborting_a_node_still_lets_every_listener_see_the_ready_event_first() -> None:
    graph = diamond()
    order: list[str] = []

    def on_complete(key: str) -> None:
        if key == "A":
            graph.abort("C")

    graph.subscribe(on_complete=on_complete)
    graph.subscribe(
        on_ready=lambda key: order.append(f"ready {key}"),
        on_abort=lambda key: order.append(f"abort {key}"),
    )
    graph.start("A")
    assert graph.complete("A") == ["B", "C"]
    assert order == ["ready B", "ready C", "abort C", "abort D"]
    assert graph.get_state("C") is ABORTED


def test_listener_error_from_a_nested_transition_reaches_the_outer_caller() -> None:
    graph: DependencyGraph[str] = DependencyGraph()

    def starter(key: str) -> None:
        if key == "a":
            graph.add_node("b")  # its event is delivered by the outer call

    def bad(key: str) -> None:
        if key == "b":
            raise LookupError("b")

    graph.subscribe(on_ready=starter)
    graph.subscribe(on_ready=bad)
    with pytest.raises(LookupError, match="b"):
        graph.add_node("a")
    assert list(graph.ready) == ["a", "b"]


# -- queries ----------------------------------------------------------------------------------


def test_views_are_live_and_read_only() -> None:
    graph = diamond()
    ready = graph.ready
    assert ready == {"A"}
    run(graph, "A")
    assert list(ready) == ["B", "C"]
    assert ready & {"C", "D"} == {"C"}
    assert not hasattr(ready, "add")
    with pytest.raises(RuntimeError, match="mutated during iteration"):
        for key in graph.ready:
            graph.abort(key)
    graph2 = diamond()
    run(graph2, "A")
    for key in list(graph2.ready):  # the documented way
        graph2.abort(key)
    assert graph2.is_done


def test_topological_sort_and_has_cycle_on_a_long_chain() -> None:
    size = 10_000
    graph: DependencyGraph[int] = DependencyGraph()
    graph.add_all({i: [i - 1] if i else [] for i in reversed(range(size))})
    assert graph.topological_sort() == list(range(size))
    assert not graph.has_cycle()
    assert graph.abort(0) == list(range(size))
    assert graph.is_done


def test_has_cycle_detects_a_corrupted_graph() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    graph.add_all({"a": [], "b": ["a"], "c": ["b"]})
    assert not graph.has_cycle()
    graph._nodes["a"].dependencies.append("c")  # only possible by reaching inside
    assert graph.has_cycle()


def test_any_hashable_key() -> None:
    graph: DependencyGraph[Hashable] = DependencyGraph()
    graph.add_node(("job", 1))
    graph.add_node(7, [("job", 1)])
    graph.add_node(frozenset({"x"}), [7])
    assert graph.topological_sort() == [("job", 1), 7, frozenset({"x"})]
    with pytest.raises(TypeError):
        graph.add_node(["unhashable"])  # type: ignore[arg-type]


# -- random operations ------------------------------------------------------------------------

_TIMES = st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.0, 5.0])


class GraphMachine(RuleBasedStateMachine):
    """Random operations; checks invariants and that the events match the transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.graph: DependencyGraph[str] = DependencyGraph()
        self.recorder = Recorder(self.graph)
        self.second: list[tuple[str, str]] = []
        self.graph.subscribe(
            on_ready=lambda key: self.second.append(("ready", key)),
            on_complete=lambda key: self.second.append(("complete", key)),
            on_abort=lambda key: self.second.append(("abort", key)),
        )
        self.counter = 0
        self.retry: dict[str, tuple[float, int]] = {}  # FAILED key -> (retry_at, fail order)
        self.fail_order = 0
        self.ready_order: list[str] = []  # model of graph.ready, from the events
        self.before: dict[str, NodeState] = {}

    # helpers

    def new_key(self) -> str:
        self.counter += 1
        return f"k{self.counter}"

    def keys_in(self, state: NodeState) -> list[str]:
        return [key for key in self.graph if self.graph.get_state(key) is state]

    def begin(self) -> None:
        self.before = {key: self.graph.get_state(key) for key in self.graph}
        assert self.recorder.take() == []
        self.second.clear()

    def end(self) -> list[tuple[str, str]]:
        """Check the events of this step against the state changes; return them."""
        events = self.recorder.take()
        assert self.second == events  # every listener sees the same history
        expected: dict[str, list[str]] = {"ready": [], "complete": [], "abort": []}
        for key in self.graph:
            old, new = self.before.get(key), self.graph.get_state(key)
            if new is not old:
                if new is READY:
                    expected["ready"].append(key)
                elif new is COMPLETED:
                    expected["complete"].append(key)
                elif new is ABORTED:
                    expected["abort"].append(key)
        for kind, keys in expected.items():
            assert sorted(key for k, key in events if k == kind) == sorted(keys)
        for kind, key in events:
            if kind == "ready":
                self.ready_order.append(key)
            elif key in self.ready_order:
                self.ready_order.remove(key)
        for key in list(self.retry):
            if self.graph.get_state(key) is not FAILED:
                del self.retry[key]
        return events

    # rules

    @rule(data=st.data())
    def add_node(self, data: st.DataObject) -> None:
        existing = list(self.graph)
        deps = data.draw(st.lists(st.sampled_from(existing), max_size=3)) if existing else []
        key = self.new_key()
        self.begin()
        state = self.graph.add_node(key, deps)
        events = self.end()
        assert events == (
            [("ready", key)] if state is READY else [("abort", key)] * (state is ABORTED)
        )
        assert self.graph.dependencies(key) == list(dict.fromkeys(deps))

    @rule(data=st.data(), size=st.integers(min_value=1, max_value=5), mistake=st.integers(0, 5))
    def add_all(self, data: st.DataObject, size: int, mistake: int) -> None:
        existing = list(self.graph)
        new = [self.new_key() for _ in range(size)]
        spec: dict[str, list[str]] = {}
        for i, key in enumerate(new):
            candidates = existing + new[:i]
            spec[key] = (
                data.draw(st.lists(st.sampled_from(candidates), max_size=3)) if candidates else []
            )
        order = data.draw(st.permutations(new))
        mapping = {key: spec[key] for key in order}
        if mistake == 1 and size >= 2:  # close a cycle between the first and last new keys
            mapping[new[0]] = [*mapping[new[0]], new[-1]]
            mapping[new[-1]] = [*mapping[new[-1]], new[0]]
        elif mistake == 2:
            mapping[new[0]] = [*mapping[new[0]], "missing"]
        elif mistake == 3 and existing:
            mapping[existing[0]] = []
        bad = mapping != {key: spec[key] for key in order}
        self.begin()
        before = snapshot(self.graph)
        if bad:
            with pytest.raises(DependencyError) as info:
                self.graph.add_all(mapping)
            assert snapshot(self.graph) == before
            assert self.end() == []
            if mistake == 1:
                assert isinstance(info.value, CycleError)
                cycle = info.value.cycle
                assert cycle[0] == cycle[-1]
                assert all(b in mapping[str(a)] for a, b in itertools.pairwise(cycle))
            return
        states = self.graph.add_all(mapping)
        events = self.end()
        assert list(states) == order
        inserted = [key for key in self.graph if key in mapping]
        assert [key for kind, key in events] == [
            key for key in inserted if states[key] in (READY, ABORTED)
        ]

    @precondition(lambda self: any(True for _ in self.graph.ready))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(list(self.graph.ready)))
        self.begin()
        self.graph.start(key)
        assert self.end() == []
        self.ready_order.remove(key)

    @precondition(lambda self: any(True for _ in self.graph.running))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(list(self.graph.running)))
        self.begin()
        newly = self.graph.complete(key)
        events = self.end()
        assert newly is not None
        assert events == [("complete", key)] + [("ready", k) for k in newly]
        assert newly == [
            k
            for k in self.graph.dependents(key)
            if self.before[k] is PENDING and k in self.graph.ready
        ]

    @precondition(lambda self: any(True for _ in self.graph.running))
    @rule(data=st.data(), retry_at=st.none() | _TIMES)
    def fail(self, data: st.DataObject, retry_at: float | None) -> None:
        key = data.draw(st.sampled_from(list(self.graph.running)))
        self.begin()
        assert self.graph.fail(key, retry_at=retry_at) is True
        events = self.end()
        if retry_at is None:
            assert events == [("ready", key)]
        else:
            assert events == []
            self.fail_order += 1
            self.retry[key] = (retry_at, self.fail_order)

    @rule(now=_TIMES)
    def release_due(self, now: float) -> None:
        due = sorted((entry, key) for key, entry in self.retry.items() if entry[0] <= now)
        self.begin()
        released = self.graph.release_due(now)
        events = self.end()
        assert released == [key for _, key in due]
        assert events == [("ready", key) for key in released]

    @precondition(lambda self: len(self.graph) > 0)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(list(self.graph)))
        old = self.graph.get_state(key)
        self.begin()
        aborted = self.graph.abort(key)
        events = self.end()
        assert events == [("abort", k) for k in aborted]
        if old in (COMPLETED, ABORTED):
            assert aborted == []
        else:
            assert aborted[0] == key

    @precondition(lambda self: len(self.graph) > 0)
    @rule(data=st.data(), action=st.sampled_from(["start", "complete", "fail"]))
    def maybe_invalid(self, data: st.DataObject, action: str) -> None:
        key = data.draw(st.sampled_from(list(self.graph)))
        state = self.graph.get_state(key)
        valid = {"start": READY, "complete": RUNNING, "fail": RUNNING}[action]
        if state is valid:
            return
        self.begin()
        before = snapshot(self.graph)
        if state is ABORTED and action != "start":
            result = self.graph.complete(key) if action == "complete" else self.graph.fail(key)
            assert result is (None if action == "complete" else False)
        else:
            with pytest.raises(InvalidTransitionError, match=repr(key)):
                getattr(self.graph, action)(key)
        assert snapshot(self.graph) == before
        assert self.end() == []

    # invariants

    @invariant()
    def states_are_consistent(self) -> None:
        graph = self.graph
        views = {
            PENDING: graph.pending,
            READY: graph.ready,
            RUNNING: graph.running,
            COMPLETED: graph.completed,
            FAILED: graph.failed,
            ABORTED: graph.aborted,
        }
        assert sum(len(view) for view in views.values()) == len(graph)
        for key in graph:
            state = graph.get_state(key)
            assert key in views[state]
            deps = [graph.get_state(dep) for dep in graph.dependencies(key)]
            if state in (READY, RUNNING, COMPLETED, FAILED):
                assert all(dep is COMPLETED for dep in deps)
            elif state is PENDING:
                assert any(dep is not COMPLETED for dep in deps)
                assert ABORTED not in deps
            else:
                assert all(graph.get_state(d) is ABORTED for d in graph.dependents(key))
            for dep in graph.dependencies(key):
                assert key in graph.dependents(dep)
        for key in graph:
            assert graph.dependents(key) == [k for k in graph if key in graph.dependencies(k)]
        assert graph.is_done == all(graph.get_state(k) in (COMPLETED, ABORTED) for k in graph)
        assert list(graph.ready) == self.ready_order
        assert set(graph.failed) == set(self.retry)
        due = min((entry[0] for entry in self.retry.values()), default=None)
        assert graph.next_due() == due
        position = {key: i for i, key in enumerate(graph.topological_sort())}
        assert len(position) == len(graph)
        assert all(position[d] < position[k] for k in graph for d in graph.dependencies(k))
        assert not graph.has_cycle()


TestGraphMachine = GraphMachine.TestCase
