"""Every example in README.md and docs/ runs as printed (docs/benchmarks.rst excepted).

The project's rule is that every example in the README and the docs runs as printed, and a test
proves it. This module reads every code block of README.md and of every page under docs/ (but
docs/benchmarks.rst, which belongs to the benchmarks) and checks each one:

**Complete programs.** A ``.. code-block:: python`` (a ```` ```python ```` fence in the README) is
a complete program when it parses as a module and, at module level (directly, or inside a
module-level ``with``, ``if`` or ``try``; never inside a ``def`` or a ``class``), calls
``trio.run(...)`` or has an ``if __name__ == "__main__":`` block. Each one runs in a fresh
subprocess of this interpreter, in an empty temporary directory, with the repository's root on
``PYTHONPATH``, and what it prints (stdout and stderr) must be exactly its expected output: the
``text`` block that comes right after it (after prose only, no other block between), introduced
by a sentence that ends with a colon ("It prints:"). A program whose output is instead shown by
the ``console`` session after it (``$ python story.py ...``) is run by that session. A complete
program without an expected output fails: every program on a page shows what it prints.

A program whose first line is a comment ``# NAME.py``, or whose docstring starts with
``python NAME.py``, is saved as NAME.py (others as example.py); a block of the same page that is
such a named module without being a program (``# greetings.py``) is saved beside every program of
the page, so that the programs can import it.

**Fragments.** Every other ``python`` block (and every ``::`` literal block that is Python) is a
fragment: a part of a program, for reading. It must compile (``await`` at top level allowed).
The README has no fragments: each of its ``python`` blocks is a complete program, run as above.
``json`` blocks (protocol frames) must parse, as one document or as one document per line.

**Console sessions.** A ``console`` block is a shell session: ``$ `` starts a command (a line
ending with ``\\`` continues it) and the lines up to the next command are what it prints (stdout
and stderr). Sessions run command by command with bash, with this interpreter's ``bin`` first on
``PATH`` (``python`` and ``sluiceway`` are this environment's) and ``COLUMNS=80`` (argparse
wraps its usage lines to the terminal), in an empty temporary directory; the program a session
runs (``story.py``) is saved there first, and the CLI guide's sessions run where its campaign
store was written as that guide says (``python campaign.py campaigns.db``), beside a
``notes.txt`` that its error examples open. ``NAME=VALUE``, ``NAME=$(...)`` and ``export
NAME=VALUE`` set a variable for the commands after them, and ``$?`` is the exit status of the
previous command (137 for a process killed by SIGKILL). A server that a session starts and stops
with Ctrl-C (a ``^C`` in the output) gets a SIGINT once it printed what comes before the ``^C``.
Sessions that pipe into ``jq`` are skipped, saying so, where jq is not installed.

**Shell scripts.** An ``sh`` block (a ```` ```sh ```` fence in the README) that is not one of
the nox commands or the server guide's ``sluiceway serve`` command (below) is a script, to copy
and paste into a shell: it runs whole with ``bash -e -o pipefail`` (every command must
succeed), in the environment of the console sessions, in an empty temporary directory. The
servers it starts in the background (``&``) and stops with ``kill %1 %2`` are in its process
group, which is ended after it (SIGTERM, then SIGKILL for what is still there after 10
seconds). If the block is followed by a ``text`` block introduced by a sentence that ends with
a colon, each line of it must match a line the script printed on stdout (its last command's
result, say). Ports 8765 and 8085 are replaced by free ports.

**Other blocks that run.** The server guide's ``sluiceway serve`` command serves its
application (``greetings.py``) for the client guide's program, which runs twice (the page says
the second run prints the same); the protocol page's HTTP refusals (401, 403) are compared with
what that server answers, header names in lower case (HTTP compares them so); the server guide's
test of an endpoint runs with pytest-trio. ``sh`` blocks that show the nox commands are checked
against noxfile.py and .ci/run.

**Blocks that are not run** are listed in ``NOT_RUN`` with the reason (shell commands that need
other services or show elided ids, HTTP exchanges that cannot be provoked from here). ``text``
blocks that are not an expected output are diagrams and synopses.
``test_every_block_is_accounted_for`` fails on any block that falls under no rule, and on an
entry of this module's tables that names no block. An example that fails because of a library
bug rather than its page is marked in ``KNOWN_BUGS`` with the bug (an ``xfail`` that says so,
until the bug is fixed).

**What may vary.** The comparison is exact, except for what the page itself documents as
variable, written in the expected output as one of these markers:

``<uuid>``
    an entity id (a UUID4, different on every run);
``<timestamp>``
    wall-clock seconds since the epoch (``created_at``, an envelope's ``ts``);
``<n>``
    a whole number that depends on how concurrent work interleaved (a sequence number or a row id
    in a store that concurrent tasks wrote);
``<owner>``
    a runtime's lease owner id (``host:pid:random``, different on every run).

Lines printed at the same moment by concurrent tasks come in an order that trio does not fix
(it shuffles tasks woken together, on purpose). Where a page says so, in the sentence that
introduces the output with the words "in another order", the lines are compared as a multiset:
each line must match one expected line, and no line may be missing or extra.

Programs and sessions that use port 8765 (``sluiceway serve``'s default) run on a free port
instead: the test replaces ``8765`` in the commands, the programs and the expected output, and adds
``--port`` to a ``sluiceway serve`` command that has none. Everything else runs as printed.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWNED_ELSEWHERE = {"docs/benchmarks.rst"}  # the benchmarks' own page, checked with them
TIMEOUT = 60  # seconds for any one command or program

# ---------------------------------------------------------------------------------------------
# Blocks not run, each with its reason, keyed by (page, the block's first line).

NOT_RUN: dict[tuple[str, str], str] = {
    (
        "docs/guides/stories.rst",
        "$ python -m sluiceway.apps.imagegen --db images.db --blobs blobs --port 8086"
        " --latency 1 &",
    ): "starts two servers in the background and elides the story's id as '...'; the same flow "
    "runs in the page's story.py and in the main job's stories (nox -s demo), run by "
    "tests/test_demo_stories.py",
    (
        "docs/guides/engine.rst",
        "$ python -m sluiceway.apps.notification --db notify.db --port 8085 &",
    ): "starts two servers in the background, reads a campaign file the page does not show "
    "and elides the campaign's id as '...'; the same flow runs in the page's drip.py and in "
    "the main job's drip (nox -s demo), run by tests/test_demo_drip.py",
    (
        "docs/guides/campaigns.rst",
        "$ curl -X POST localhost:8085/v1/emails/3f6c.../opened -d '{\"at\": 1767258000}' \\",
    ): "needs the notification service running with a sent email (its id is elided); "
    "tests/apps/test_notification_engagement.py makes these requests",
    (
        "docs/guides/campaigns.rst",
        "$ python -m sluiceway.apps.notification --db notify.db --port 8085 &",
    ): "starts two servers in the background and elides every id as '...'; the same flow is "
    "the main job (nox -s demo), run by tests/test_demo_live.py",
    (
        "docs/guides/cli.rst",
        '$ sluiceway call campaigns/execute --body \'{"campaign_id": "935367f1-..."}\'',
    ): "needs the campaign application served with its notification service and a prepared "
    "campaign (its id is elided), and the live display of sluiceway run is drawn on a terminal; "
    "tests/cli/test_remote_cli.py runs these commands",
    (
        "docs/guides/cli.rst",
        "$ export SLUICEWAY_DB=postgresql://sluiceway:s3cret@db.internal/campaigns",
    ): "needs a PostgreSQL server (db.internal); tests/cli/test_worker.py runs the same "
    "command on a SQLite file",
    (
        "docs/guides/scaleout.rst",
        "$ psql postgresql://sluiceway:s3cret@db.internal/app -c 'CREATE SCHEMA campaigns'",
    ): "needs a PostgreSQL server (db.internal) and the notification service; "
    "tests/test_demo_scaleout.py runs workers on a schema of their own the same way",
    (
        "docs/guides/scaleout.rst",
        '$ sluiceway serve --app sluiceway.apps.campaigns:app --host 0.0.0.0 --token "$TOKEN"',
    ): "needs a PostgreSQL server (db.internal); tests/cli runs sluiceway serve on a store",
    ("docs/protocol.rst", "HTTP/1.1 503"): "the answer to a connection made while the server "
    "shuts down: too narrow a moment to catch from here (tests/server checks it)",
    ("docs/protocol.rst", "GET / HTTP/1.1"): "an HTTP request shown as data, with its other "
    "headers elided ('...')",
}

# sh blocks that show the nox commands: checked against noxfile.py and .ci/run.
NOX_COMMANDS = {
    ("README.md", "python3 -m pip install nox && python3 -m nox -s demo"),
    ("README.md", "python3 -m pip install nox && python3 -m nox -s scaleout"),
    ("README.md", "python3 -m pip install nox"),
    ("docs/index.rst", "python3 -m pip install nox && python3 -m nox -s demo"),
}

# Blocks that other tests of this module run, besides the programs and the console sessions.
SERVE_COMMAND = (
    "docs/guides/server.rst",
    "python -m sluiceway serve --app greetings:app --db greetings.db --token s3cret",
)  # serves the client guide's program (the greetings_server fixture)
ENDPOINT_TEST = ("docs/guides/server.rst", "import pytest")  # a test module: run with pytest
# HTTP answers of the protocol page, each with the request headers that get it from the server.
HTTP_REFUSALS = {
    ("docs/protocol.rst", "HTTP/1.1 403"): "Origin: http://evil.example",  # another site
    ("docs/protocol.rst", "HTTP/1.1 401"): "",  # no token
}
RUN_TWICE = {
    "docs/guides/client.rst": "the page says a second run prints the same, from the stored log",
}

# Examples that fail because of a library bug, not because of the page; each entry says which
# bug (none at the moment).
KNOWN_BUGS: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------------------------------------
# Reading the pages


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository's root
    line: int  # of the directive or the opening fence, from 1
    lang: str  # python, text, console, sh, json, http...; "::" for a literal block
    code: str  # dedented, ending with one newline
    intro: str  # the paragraph just before the block, on one line
    end: int  # the index (from 0) of the page's first line after the block

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def first_line(self) -> str:
        return next(line for line in self.code.splitlines() if line.strip())


def pages() -> list[Path]:
    found = [ROOT / "README.md"]
    for path in sorted((ROOT / "docs").rglob("*.rst")):
        relative = path.relative_to(ROOT).as_posix()
        if "_build" not in path.parts and relative not in OWNED_ELSEWHERE:
            found.append(path)
    return found


def _intro(lines: list[str], index: int) -> str:
    """The paragraph that ends just before ``lines[index]``, joined on one line."""
    end = index
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and lines[start - 1].strip():
        start -= 1
    return " ".join(line.strip() for line in lines[start:end])


def read_blocks(path: Path) -> list[Block]:
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks = []
    if path.suffix == ".md":
        index = 0
        while index < len(lines):
            fence = re.fullmatch(r"```(\w*)\s*", lines[index])
            if fence:
                end = index + 1
                while not lines[end].startswith("```"):
                    end += 1
                code = "\n".join(lines[index + 1 : end]).strip("\n") + "\n"
                intro = _intro(lines, index)
                lang = fence.group(1) or "text"
                blocks.append(Block(page, index + 1, lang, code, intro, end + 1))
                index = end + 1
            else:
                index += 1
        return blocks
    for index, line in enumerate(lines):
        directive = re.fullmatch(r"\.\. code-block:: (\S+)\s*", line)
        literal = (
            not directive
            and line.rstrip().endswith("::")
            and not line.lstrip().startswith("..")
            and index + 1 < len(lines)
            and not lines[index + 1].strip()
        )
        if not directive and not literal:
            continue
        indent = len(line) - len(line.lstrip())
        end = index + 1
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        code = textwrap.dedent("\n".join(lines[index + 1 : end])).strip("\n") + "\n"
        if directive:
            intro = _intro(lines, index)
            blocks.append(Block(page, index + 1, directive.group(1), code, intro, end))
        else:
            blocks.append(Block(page, index + 1, "::", code, line.strip(), end))
    return blocks


ALL_BLOCKS = [block for path in pages() for block in read_blocks(path)]


def is_program(code: str) -> bool:
    """A complete program: a module-level ``trio.run(...)`` call or ``__main__`` guard."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False

    def runs(statements: list[ast.stmt]) -> bool:
        for statement in statements:
            if isinstance(statement, ast.If) and "__main__" in ast.unparse(statement.test):
                return True
            if (
                isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Call)
                and ast.unparse(statement.value.func) == "trio.run"
            ):
                return True
            if isinstance(statement, ast.With | ast.If | ast.Try):
                nested = [*statement.body, *getattr(statement, "orelse", [])]
                nested += getattr(statement, "finalbody", [])
                if runs(nested):
                    return True
        return False

    return runs(tree.body)


def module_name(code: str) -> str | None:
    """``NAME.py`` if the block names its file: ``# NAME.py``, or a docstring ``python NAME.py``."""
    first = code.lstrip().splitlines()[0]
    named = re.fullmatch(r"#\s*(\w+\.py)\s*", first) or re.match(r'"""python (\w+\.py)\b', first)
    return named.group(1) if named else None


def is_python(code: str) -> bool:
    try:
        compile(code, "<block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return True


@dataclass
class Program:
    block: Block
    expected: Block | None  # the text block of its output
    session: Block | None  # the console session that runs it
    modules: dict[str, str] = field(default_factory=dict)  # other named blocks of its page

    @property
    def file_name(self) -> str:
        return module_name(self.block.code) or "example.py"


def following_block(block: Block) -> Block | None:
    """The next block of the same page, if only prose (no heading) separates the two."""
    page_blocks = [other for other in ALL_BLOCKS if other.page == block.page]
    later = [other for other in page_blocks if other.line > block.line]
    if not later:
        return None
    nxt = later[0]
    text = (ROOT / block.page).read_text(encoding="utf-8").split("\n")
    between = text[block.end : nxt.line - 1]
    heading = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$|^#+ ")
    if any(heading.match(line) for line in between):
        return None
    return nxt


def find_programs() -> list[Program]:
    programs = []
    for block in ALL_BLOCKS:
        if block.lang != "python" or not is_program(block.code):
            continue
        modules = {
            name: other.code
            for other in ALL_BLOCKS
            if other.page == block.page
            and other.lang == "python"
            and other is not block
            and not is_program(other.code)
            and (name := module_name(other.code))
        }
        nxt = following_block(block)
        expected = session = None
        if nxt is not None and nxt.intro.endswith(":"):
            if nxt.lang == "text":
                expected = nxt
            elif nxt.lang == "console":
                session = nxt
        programs.append(Program(block, expected, session, modules))
    return programs


PROGRAMS = find_programs()
OUTPUTS = {id(program.expected) for program in PROGRAMS if program.expected}
SESSIONS_OF_PROGRAMS = {program.session.id: program for program in PROGRAMS if program.session}


# ---------------------------------------------------------------------------------------------
# Comparing what was printed with what a page shows

MARKERS = {
    "<uuid>": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "<timestamp>": r"\d{10}(?:\.\d+)?",
    "<n>": r"\d+",
    "<owner>": r"[^\s:]+:\d+:[0-9a-f]{12}",
}
_MARKER = re.compile("|".join(re.escape(marker) for marker in MARKERS))


def line_pattern(expected_line: str) -> re.Pattern[str]:
    parts = _MARKER.split(expected_line)
    markers = _MARKER.findall(expected_line)
    regex = re.escape(parts[0])
    for marker, part in zip(markers, parts[1:], strict=True):
        regex += MARKERS[marker] + re.escape(part)
    return re.compile(regex)


def in_another_order(intro: str) -> bool:
    return "in another order" in intro


def assert_prints(actual: str, expected: str, *, any_order: bool, what: str) -> None:
    got = actual.splitlines()
    want = expected.splitlines()
    if any_order:
        unmatched = list(got)
        missing = []
        for line in want:
            pattern = line_pattern(line)
            match = next((other for other in unmatched if pattern.fullmatch(other)), None)
            if match is None:
                missing.append(line)
            else:
                unmatched.remove(match)
        report = (
            f"{what} printed lines that the page does not show (in any order):\n"
            + "".join(f"  + {line}\n" for line in unmatched)
            + "and the page shows lines it did not print:\n"
            + "".join(f"  - {line}\n" for line in missing)
        )
        assert not missing, report
        assert not unmatched, report
        return
    same = len(got) == len(want) and all(
        line_pattern(line).fullmatch(other) for line, other in zip(want, got, strict=True)
    )
    if not same:
        diff = "".join(
            difflib.unified_diff(
                [line + "\n" for line in want],
                [line + "\n" for line in got],
                "the page shows",
                "it printed",
            )
        )
        raise AssertionError(f"{what} did not print what the page shows:\n{diff}")


# ---------------------------------------------------------------------------------------------
# Running things


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "80"  # argparse wraps its usage lines to the terminal's width
    env.pop("SLUICEWAY_DB", None)
    env.pop("SLUICEWAY_URL", None)
    env.pop("SLUICEWAY_TOKEN", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_port(text: str, port: int) -> str:
    return text.replace("8765", str(port))


def run_program(
    path: Path, args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, path.name, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@contextlib.contextmanager
def background(
    command: list[str], cwd: Path, env: dict[str, str], ready: re.Pattern[str]
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A process that runs until the block ends, entered once it printed a line that ``ready``
    finds something in; the block gets the process and what it printed until then."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = threading.Timer(TIMEOUT, process.kill)  # never wait for ``ready`` forever
    deadline.start()
    try:
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if ready.search(line):
                break
        else:
            raise AssertionError(f"{command} ended before {ready.pattern!r}:\n{''.join(lines)}")
        yield process, "".join(lines)
    finally:
        deadline.cancel()
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


# ---------------------------------------------------------------------------------------------
# Console sessions


@dataclass
class Command:
    text: str  # as printed, continuation lines joined
    output: str
    interrupt_after: str | None = None  # the output up to a "^C": SIGINT once it is printed


def parse_session(code: str) -> list[Command]:
    commands: list[Command] = []
    lines = code.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"a console session starts with a command: {line!r}"
        command = line[2:]
        while command.endswith("\\"):
            index += 1
            command = command[:-1].rstrip() + " " + lines[index].strip()
        index += 1
        output = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        while output and not output[-1].strip():
            output.pop()
        text = "\n".join(output) + "\n" if output else ""
        interrupt = None
        if "^C" in text:
            interrupt, _, rest = text.partition("^C")
            text = interrupt + rest
        commands.append(Command(command, text, interrupt))
    return commands


def run_session(session: Block, cwd: Path, port: int | None = None) -> None:
    env = environment()
    status = 0
    any_order = in_another_order(session.intro)
    for number, command in enumerate(parse_session(session.code), 1):
        text = command.text
        assignment = re.fullmatch(r"(?:export )?(\w+)=(\$\(.*\)|\S+)", text)
        if assignment:  # a variable for the commands after it: NAME=VALUE or NAME=$(...)
            name = assignment.group(1)
            done = subprocess.run(
                ["bash", "-c", f'{text}; printf %s "${name}"'],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=True,
            )
            assert not command.output, f"the page shows output for {text}"
            assert not done.stderr, done.stderr
            env[name] = done.stdout
            status = 0
            continue
        expected, interrupt_after = command.output, command.interrupt_after
        if port is not None:
            text, expected = with_port(text, port), with_port(expected, port)
            interrupt_after = interrupt_after and with_port(interrupt_after, port)
            if re.search(r"\bsluiceway serve\b", text) and "--port" not in text:
                text += f" --port {port}"
        what = f"command {number} of {session.id} ({command.text})"
        script = f"(exit {status}); {text}" if "$?" in text else text
        if interrupt_after is not None:
            printed = run_interrupted(script, cwd, env, interrupt_after)
            assert_prints(printed, expected, any_order=any_order, what=what)
            status = 0
            continue
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        status = done.returncode if done.returncode >= 0 else 128 - done.returncode
        assert_prints(done.stdout, expected, any_order=any_order, what=what)


def run_interrupted(script: str, cwd: Path, env: dict[str, str], first: str) -> str:
    """Run ``script`` until it printed ``first``, then send SIGINT and return all it printed."""
    ready = line_pattern(first.splitlines()[-1])
    with background(["bash", "-c", script], cwd, env, ready) as (process, printed):
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: to the whole process group
        rest, _ = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, f"{script!r} exited {process.returncode}:\n{printed}"
        return printed + rest


# ---------------------------------------------------------------------------------------------
# Preparing the directory a program or session runs in


def write_program(program: Program, directory: Path, port: int | None = None) -> Path:
    for name, code in program.modules.items():
        (directory / name).write_text(code, encoding="utf-8")
    path = directory / program.file_name
    code = program.block.code if port is None else with_port(program.block.code, port)
    path.write_text(code, encoding="utf-8")
    return path


def block_key(block: Block) -> tuple[str, str]:
    return block.page, block.first_line


def program_for(page: str, name: str) -> Program:
    return next(p for p in PROGRAMS if p.block.page == page and p.file_name == name)


@pytest.fixture(scope="module")
def campaign_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store the CLI guide reads: ``python campaign.py campaigns.db`` (the entities guide's
    campaign example), and the ``notes.txt`` its error examples open."""
    directory = tmp_path_factory.mktemp("campaign-store")
    program = program_for("docs/guides/entities.rst", "campaign.py")
    path = write_program(program, directory)
    done = run_program(path, ["campaigns.db"], directory, environment())
    assert done.returncode == 0, done.stdout
    (directory / "notes.txt").write_text("not a database\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def greetings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The server guide's application served by its own command (``sluiceway serve``)."""
    directory = tmp_path_factory.mktemp("greetings-server")
    program = program_for("docs/guides/server.rst", "serve_greetings.py")
    for name, code in program.modules.items():
        (directory / name).write_text(code, encoding="utf-8")
    [command] = [block.code.strip() for block in ALL_BLOCKS if block_key(block) == SERVE_COMMAND]
    port = free_port()
    with background(
        ["bash", "-c", f"{command} --port {port}"],
        directory,
        environment(),
        re.compile("serving greetings"),
    ) as (server, _):
        yield port
        os.killpg(server.pid, signal.SIGINT)
        server.wait(TIMEOUT)
        assert server.returncode == 0


# ---------------------------------------------------------------------------------------------
# The tests

INTERRUPTED = {
    "serve_greetings.py": "serves until Ctrl-C: it gets a SIGINT once it printed its first line",
}


#: The programs run on their own (those a console session runs are checked by that session).
ON_THEIR_OWN = [program for program in PROGRAMS if program.session is None]


@pytest.mark.parametrize("program", ON_THEIR_OWN, ids=[p.block.id for p in ON_THEIR_OWN])
def test_a_program_prints_what_the_page_shows(
    program: Program, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert program.expected is not None, (
        f"{program.block.id} is a complete program, but no 'text' block introduced by a "
        "sentence ending with a colon ('It prints:') follows it"
    )
    expected = program.expected.code
    port = None
    if 'connect("ws://127.0.0.1:8765"' in program.block.code:
        port = request.getfixturevalue("greetings_server")
    elif "8765" in program.block.code:
        port = free_port()
    if port is not None:
        expected = with_port(expected, port)
    path = write_program(program, tmp_path, port)
    if program.file_name in INTERRUPTED:
        printed = run_interrupted(
            f"{sys.executable} {path.name}",
            tmp_path,
            environment(),
            expected.splitlines()[0],
        )
    else:
        done = run_program(path, [], tmp_path, environment())
        assert done.returncode == 0, f"{program.block.id} exited {done.returncode}:\n{done.stdout}"
        printed = done.stdout
    any_order = in_another_order(program.expected.intro)
    assert_prints(printed, expected, any_order=any_order, what=program.block.id)
    if program.block.page in RUN_TWICE:
        again = run_program(path, [], tmp_path, environment())
        assert again.returncode == 0, again.stdout
        assert_prints(again.stdout, expected, any_order=any_order, what="its second run")


SESSIONS = [block for block in ALL_BLOCKS if block.lang == "console"]
RUN_SESSIONS = [block for block in SESSIONS if (block.page, block.first_line) not in NOT_RUN]


@pytest.mark.parametrize("session", RUN_SESSIONS, ids=[block.id for block in RUN_SESSIONS])
def test_a_console_session_prints_what_the_page_shows(
    session: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if "| jq" in session.code and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    if block_key(session) in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_BUGS[block_key(session)]))
    cwd = tmp_path
    if session.page == "docs/guides/cli.rst" and "graph" in session.code:
        cwd = request.getfixturevalue("campaign_store")
    program = SESSIONS_OF_PROGRAMS.get(session.id)
    if program is not None:
        write_program(program, cwd)
    port = free_port() if "sluiceway serve" in session.code else None
    run_session(session, cwd, port)


FRAGMENTS = [
    block
    for block in ALL_BLOCKS
    if (block.lang == "python" and not is_program(block.code))
    or (block.lang == "::" and is_python(block.code))
]


@pytest.mark.parametrize("block", FRAGMENTS, ids=[block.id for block in FRAGMENTS])
def test_a_fragment_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_every_python_block_of_the_readme_is_a_program_that_runs() -> None:
    """The README's examples are copied first: none of them is a fragment."""
    readme = [block for block in ALL_BLOCKS if block.page == "README.md" and block.lang == "python"]
    assert readme
    fragments = [block.id for block in readme if block in FRAGMENTS]
    assert not fragments, f"README blocks that are not complete programs: {fragments}"
    run = {id(program.block) for program in ON_THEIR_OWN if program.expected is not None}
    assert all(id(block) in run for block in readme)


SCRIPTS = [
    block
    for block in ALL_BLOCKS
    if block.lang == "sh" and block_key(block) not in {*NOX_COMMANDS, SERVE_COMMAND}
]
SCRIPT_PORTS = ("8765", "8085")  # sluiceway serve's and the notification service's


def script_output(script: Block) -> Block | None:
    """The ``text`` block of what the script prints, if the page shows it."""
    nxt = following_block(script)
    if nxt is not None and nxt.lang == "text" and nxt.intro.endswith(":"):
        return nxt
    return None


def end_process_group(pgid: int) -> None:
    """End what is left of a script's process group (the servers of a script that failed
    before it stopped them): SIGTERM, a moment to shut down, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.parametrize("script", SCRIPTS, ids=[block.id for block in SCRIPTS])
def test_a_shell_script_runs_as_printed(script: Block, tmp_path: Path) -> None:
    code = script.code
    for port in SCRIPT_PORTS:
        code = code.replace(port, str(free_port()))
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", code],
            cwd=tmp_path,
            env=environment(),
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        try:
            process.wait(TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            end_process_group(process.pid)
    printed = out.read_text(encoding="utf-8")
    report = f"{script.id} exited {process.returncode}:\n{printed}{err.read_text('utf-8')}"
    assert process.returncode == 0, report
    expected = script_output(script)
    if expected is not None:
        lines = printed.splitlines()
        for line in expected.code.splitlines():
            pattern = line_pattern(line)
            assert any(pattern.fullmatch(other) for other in lines), f"no line {line!r}: {report}"


JSON_BLOCKS = [block for block in ALL_BLOCKS if block.lang == "json"]


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[block.id for block in JSON_BLOCKS])
def test_a_json_block_parses(block: Block) -> None:
    try:
        json.loads(block.code)
    except json.JSONDecodeError:
        for line in block.code.splitlines():  # one frame per line
            json.loads(line)


def test_the_endpoint_test_of_the_server_guide_passes(tmp_path: Path) -> None:
    """The server guide's test of an endpoint is a pytest module: run it with pytest-trio."""
    [block] = [block for block in ALL_BLOCKS if block_key(block) == ENDPOINT_TEST]
    program = program_for("docs/guides/server.rst", "serve_greetings.py")
    for name, code in program.modules.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    (tmp_path / "test_greetings.py").write_text(block.code, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_greetings.py"],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert "1 passed" in done.stdout, done.stdout


HTTP_BLOCKS = [block for block in ALL_BLOCKS if block_key(block) in HTTP_REFUSALS]


def http_message(text: str) -> tuple[str, dict[str, str], str]:
    """The status code, the headers (names in lower case, as HTTP compares them) and the body."""
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    status, *fields = head.splitlines()
    version, code, *_reason = status.split(" ")
    headers = {}
    for line in fields:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return f"{version} {code}", headers, body.strip()


@pytest.mark.parametrize("block", HTTP_BLOCKS, ids=[block.id for block in HTTP_BLOCKS])
def test_an_http_refusal_is_what_the_protocol_page_shows(
    block: Block, greetings_server: int
) -> None:
    """The server guide's application (served with a token) refuses a handshake as shown."""
    extra = HTTP_REFUSALS[block_key(block)]
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{greetings_server}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra + chr(13) + chr(10) if extra else ''}\r\n"
    )
    with socket.create_connection(("127.0.0.1", greetings_server), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert http_message(answer.decode()) == http_message(block.code)


def nox_sessions() -> dict[str, str]:
    """The sessions of noxfile.py, each with the source of its function."""
    source = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    return {
        node.name: ast.get_source_segment(source, node) or ""
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef)
        and any("nox.session" in ast.unparse(decorator) for decorator in node.decorator_list)
    }


def test_the_readme_commands_are_what_nox_and_ci_run() -> None:
    """The README's first commands (the main job, the test suite), the scale-out demo's after
    them, its development commands and the index's copy of the first ones name nox sessions
    that do what the pages say, and .ci/run runs the test command and then the lint and docs
    sessions."""
    sessions = nox_sessions()
    readme = [block for block in ALL_BLOCKS if block.page == "README.md" and block.lang == "sh"]
    first = readme[0].code.splitlines()
    assert first == [
        "python3 -m pip install nox && python3 -m nox -s demo",
        "python3 -m pip install nox && python3 -m nox -s tests",
    ]
    [index] = [b for b in ALL_BLOCKS if b.page == "docs/index.rst" and b.lang == "sh"]
    assert index.code.splitlines() == first
    # The main job: the live campaign demo; the test suite: pytest over tests/.
    assert 'session.run("python", "-m", "sluiceway.demos.live"' in sessions["demo"]
    assert (ROOT / "src" / "sluiceway" / "demos" / "live.py").exists()
    assert 'session.run("pytest", *session.posargs)' in sessions["tests"]
    assert 'session.install("-e", ".[test]")' in sessions["tests"]
    # Right after them, the scale-out demo: its own session, with the demo extra.
    assert readme[1].code.splitlines() == [
        "python3 -m pip install nox && python3 -m nox -s scaleout"
    ]
    assert 'session.run("python", "-m", "sluiceway.demos.scaleout"' in sessions["scaleout"]
    assert 'session.install("-e", ".[demo]")' in sessions["scaleout"]
    assert (ROOT / "src" / "sluiceway" / "demos" / "scaleout.py").exists()
    development = next(b for b in readme if b.first_line == "python3 -m pip install nox")
    for line in development.code.splitlines()[1:]:
        command = line.split("#")[0].split()
        assert command[:2] == ["nox", "-s"], line
        for name in command[2:]:
            assert name in sessions, f"README names nox session {name!r}, which noxfile.py lacks"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert ci[-2:] == ["python3 -m nox -s tests", "python3 -m nox -s lint docs"], ci
    assert "python3 -m pip install --quiet nox" in ci


def test_every_block_is_accounted_for() -> None:
    checked = {id(program.block) for program in PROGRAMS} | OUTPUTS
    checked |= {id(block) for block in RUN_SESSIONS + FRAGMENTS + JSON_BLOCKS + HTTP_BLOCKS}
    checked |= {id(block) for block in SCRIPTS}
    others = {*NOT_RUN, *NOX_COMMANDS, SERVE_COMMAND}
    unaccounted = [
        f"{block.id} ({block.lang}): {block.first_line}"
        for block in ALL_BLOCKS
        if id(block) not in checked and block_key(block) not in others and block.lang != "text"
    ]
    assert not unaccounted, "blocks that no rule checks:\n" + "\n".join(unaccounted)
    listed = {block_key(block) for block in ALL_BLOCKS}
    stale = [key for key in [*others, ENDPOINT_TEST, *KNOWN_BUGS] if key not in listed]
    assert not stale, f"this module names blocks that do not exist: {stale}"
