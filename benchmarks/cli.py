"""The command line: run the selected scenarios, print the table, write the JSON results."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dag import LayeredDag
from .drip import EngineDrip
from .entities import EntityFanout
from .entities_resume import EntityResume
from .fanout import NoopFanout, SleepFanout
from .harness import (
    ASYNCIO,
    SIDES,
    SLUICEWAY,
    BenchmarkError,
    Sample,
    Scenario,
    Spread,
    Summary,
    Target,
    machine_info,
    ratio,
    summarize,
)
from .hierarchical import HierarchicalJobs
from .memory import LazyMemory
from .pages import OpenPages
from .parking import ParkedWaits
from .scaleout import Failover, ScaleOut
from .stories import StoryImages
from .subscribers import SubscriberFanout

SCENARIOS: dict[str, Scenario] = {
    scenario.key: scenario
    for scenario in (
        NoopFanout(),
        SleepFanout(),
        HierarchicalJobs(),
        LazyMemory(),
        EntityFanout(),
        EntityResume(),
        SubscriberFanout(),
        LayeredDag(),
        ParkedWaits(),
        ScaleOut(),
        Failover(),
        EngineDrip(),
        StoryImages(),
        OpenPages(),
    )
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
QUICK_JSON = Path(__file__).resolve().parent / "results" / "quick.json"
SCHEMA = 2
DEFAULT_REPEAT = 5


class ScenarioFailure(Exception):
    """A scenario stopped: a correctness check failed or something crashed."""

    def __init__(self, where: str, error: BaseException) -> None:
        super().__init__(f"{where}: {error}")
        self.where = where
        self.error = error


# -- arguments ---------------------------------------------------------------------------------


def _scenario_list(text: str) -> list[str]:
    keys = [key.strip().upper() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SCENARIOS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or text!r}; choose from {','.join(SCENARIOS)}"
        )
    return list(dict.fromkeys(keys))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Run sluiceway and an idiomatic asyncio baseline on the same workloads, in the same "
            "process run, and compare them (see benchmarks/README.md)."
        ),
    )
    parser.add_argument(
        "--scenario",
        type=_scenario_list,
        default=list(SCENARIOS),
        metavar="A,B,...",
        help=f"scenarios to run, comma-separated (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=None,
        metavar="N",
        help=(
            f"repetitions of each side (default: {DEFAULT_REPEAT}; in a full run, scenarios G, "
            "I, J and K default to 3 and L to 2: their repetitions are long)"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="much smaller workloads for a smoke run (targets are then only indicative)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help=(
            "where to merge the raw results, scenario by scenario (default: "
            "benchmarks/results/latest.json, or benchmarks/results/quick.json with --quick)"
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser.parse_args(argv)


# -- running -----------------------------------------------------------------------------------


def repetitions(scenario: Scenario, repeat: int | None, quick: bool) -> int:
    """``--repeat`` if given, else the scenario's own default for a full run (``full_repeat``,
    for a scenario whose repetitions take minutes), else :data:`DEFAULT_REPEAT`."""
    if repeat is not None:
        return repeat
    if quick:
        return DEFAULT_REPEAT
    own = getattr(scenario, "full_repeat", None)
    return own if isinstance(own, int) and own > 0 else DEFAULT_REPEAT


def _format(value: float, digits: int) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.{digits}f}"


def _progress(scenario: Scenario, rep: int, repeat: int, samples: dict[str, list[Sample]]) -> str:
    metric = scenario.metrics[0]
    parts = [
        f"{side} {_format(samples[side][-1].metrics[metric.key], metric.digits)} {metric.unit}"
        for side in SIDES
    ]
    return f"    rep {rep + 1}/{repeat}: {metric.label}: " + " | ".join(parts)


def run_scenario(scenario: Scenario, quick: bool, repeat: int) -> dict[str, Any]:
    params = scenario.params(quick)
    print(f"[{scenario.key}] {scenario.title}: {scenario.describe(params)}", flush=True)
    if scenario.warm_up:
        for side in SIDES:
            try:
                scenario.run(side, scenario.warm_up_params())
            except Exception as exc:
                raise ScenarioFailure(f"scenario {scenario.key}, {side} warm-up", exc) from exc
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    started = time.perf_counter()
    for rep in range(repeat):
        # Alternate which side goes first, so slow drift on a shared machine hits both.
        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
            try:
                sample = scenario.run(side, params)
            except Exception as exc:
                raise ScenarioFailure(
                    f"scenario {scenario.key}, {side}, repetition {rep + 1}", exc
                ) from exc
            samples[side].append(sample)
            for warning in sample.info.get("warnings", []):
                print(f"    warning ({side}, rep {rep + 1}): {warning}", flush=True)
        print(_progress(scenario, rep, repeat, samples), flush=True)
    summary = summarize(samples, scenario.metrics)
    target = scenario.target(summary, params)
    return {
        "scenario": scenario,
        "params": params,
        "repeat": repeat,
        "samples": samples,
        "summary": summary,
        "target": target,
        "seconds": time.perf_counter() - started,
    }


# -- the table ---------------------------------------------------------------------------------


def _cell(spread: Spread, digits: int) -> str:
    return (
        f"{_format(spread.median, digits)} "
        f"({_format(spread.low, digits)}-{_format(spread.high, digits)})"
    )


def _repetitions_text(records: Sequence[dict[str, Any]]) -> str:
    counts = Counter(record["repeat"] for record in records)
    common = counts.most_common(1)[0][0] if counts else DEFAULT_REPEAT
    others = [
        f"{record['scenario'].key}: {record['repeat']}"
        for record in records
        if record["repeat"] != common
    ]
    suffix = f" ({', '.join(others)})" if others else ""
    return f"{common} repetitions per side{suffix}"


def render_table(records: Sequence[dict[str, Any]], quick: bool) -> str:
    header = ("metric", "sluiceway median (min-max)", "asyncio median (min-max)", "ratio")
    lines: list[str] = []
    rows_by_record: list[list[tuple[str, str, str, str]]] = []
    for record in records:
        scenario: Scenario = record["scenario"]
        summary: Summary = record["summary"]
        rows = []
        for metric in scenario.metrics:
            spreads = summary[metric.key]
            value = ratio(summary, metric.key)
            rows.append(
                (
                    f"{metric.label} [{metric.unit}]",
                    _cell(spreads[SLUICEWAY], metric.digits),
                    _cell(spreads[ASYNCIO], metric.digits),
                    f"{value:.2f}x",
                )
            )
        rows_by_record.append(rows)
    widths = [
        max([len(header[i])] + [len(row[i]) for rows in rows_by_record for row in rows])
        for i in range(4)
    ]

    def line(cells: Sequence[str]) -> str:
        return (
            "    " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        ).rstrip()

    mode = "QUICK smoke run (reduced sizes; targets indicative only)" if quick else "full run"
    lines.append(f"Results: {mode}, {_repetitions_text(records)}; ratio = sluiceway / asyncio")
    for record, rows in zip(records, rows_by_record, strict=True):
        scenario = record["scenario"]
        target: Target = record["target"]
        lines.append("")
        lines.append(f"{scenario.key}. {scenario.title}: {scenario.describe(record['params'])}")
        lines.append(f"    baseline: {scenario.baseline}")
        lines.append(line(header))
        lines.extend(line(row) for row in rows)
        verdict = "MET" if target.met else "NOT MET"
        lines.append(f"    target: {target.goal}: {target.measured} -> {verdict}")
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _record_json(record: dict[str, Any]) -> dict[str, Any]:
    scenario: Scenario = record["scenario"]
    summary: Summary = record["summary"]
    target: Target = record["target"]
    return {
        "title": scenario.title,
        "description": scenario.describe(record["params"]),
        "baseline": scenario.baseline,
        "params": record["params"],
        "repeat": record["repeat"],
        "metrics": {
            metric.key: {"label": metric.label, "unit": metric.unit} for metric in scenario.metrics
        },
        "raw": {
            side: [{"metrics": s.metrics, "info": s.info} for s in samples]
            for side, samples in record["samples"].items()
        },
        "summary": {
            key: {
                **{
                    side: {"median": spread.median, "min": spread.low, "max": spread.high}
                    for side, spread in spreads.items()
                },
                "ratio": ratio(summary, key),
            }
            for key, spreads in summary.items()
        },
        "target": {"goal": target.goal, "measured": target.measured, "met": target.met},
        "elapsed_seconds": record["seconds"],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(document), indent=2) + "\n", encoding="utf-8")


def merge_into(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Fold this run's scenarios into the results already at ``path``.

    Running a subset of scenarios (``--scenario H``) updates those and keeps the others' latest
    results, each stored with the machine, command and options of the run that produced it.
    """
    stamp = {key: document[key] for key in ("command", "options", "machine")}
    scenarios: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("schema") == SCHEMA:
            scenarios.update(previous.get("scenarios", {}))
    for key, record in document["scenarios"].items():
        scenarios[key] = {**record, "run": stamp}
    merged = {
        "schema": SCHEMA,
        "updated": document["machine"].get("date"),
        "ok": document["ok"],
        "scenarios": dict(sorted(scenarios.items())),
        "targets_met": {
            key: record.get("target", {}).get("met") for key, record in sorted(scenarios.items())
        },
    }
    if "failure" in document:
        merged["failure"] = document["failure"]
    return merged


# -- main --------------------------------------------------------------------------------------


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _report_failure(failure: ScenarioFailure) -> None:
    leaves = _leaves(failure.error)
    correctness = [leaf for leaf in leaves if isinstance(leaf, BenchmarkError)]
    kind = "CORRECTNESS FAILURE" if correctness else "CRASH"
    bar = "!" * 78
    print(f"\n{bar}\n{kind} in {failure.where}", file=sys.stderr)
    for leaf in correctness or leaves:
        if isinstance(leaf, BenchmarkError):
            print(f"  {leaf}", file=sys.stderr)
        else:
            traceback.print_exception(leaf, file=sys.stderr)
    print(f"The numbers of this run are not valid.\n{bar}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for scenario in SCENARIOS.values():
            print(f"{scenario.key}  {scenario.title}: {scenario.describe(scenario.params(False))}")
        return 0
    machine = machine_info()
    print(
        f"sluiceway {machine['sluiceway']} / trio {machine['trio']} / Python {machine['python']}"
        f" on {machine['cpu_count']} x {machine['cpu_model']} ({machine['platform']}); "
        f"load {machine['load_average_at_start']}",
        flush=True,
    )
    document: dict[str, Any] = {
        "schema": 1,
        "command": [sys.executable, "-m", "benchmarks", *sys.argv[1:]],
        "options": {"scenarios": args.scenario, "repeat": args.repeat, "quick": args.quick},
        "machine": machine,
        "scenarios": {},
        "ok": True,
    }
    # Quick smoke runs never overwrite the real results.
    target = args.json if args.json is not None else (QUICK_JSON if args.quick else DEFAULT_JSON)
    records = []
    for key in args.scenario:
        try:
            scenario = SCENARIOS[key]
            record = run_scenario(
                scenario, args.quick, repetitions(scenario, args.repeat, args.quick)
            )
        except ScenarioFailure as failure:
            _report_failure(failure)
            document["ok"] = False
            document["failure"] = {
                "where": failure.where,
                "errors": [repr(leaf) for leaf in _leaves(failure.error)],
            }
            write_json(target, merge_into(target, document))
            print(f"partial results written to {target}", file=sys.stderr)
            return 1
        records.append(record)
        document["scenarios"][key] = _record_json(record)
    print()
    print(render_table(records, args.quick))
    met = sum(record["target"].met for record in records)
    write_json(target, merge_into(target, document))
    print(
        f"\nAll runs verified (every result delivered once, no limit exceeded). "
        f"Targets met: {met}/{len(records)}. Raw results: {target}"
    )
    return 0
