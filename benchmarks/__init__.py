"""sluiceway benchmarks: each scenario runs sluiceway and an idiomatic asyncio baseline.

Run ``python -m benchmarks --help`` (or ``nox -s bench -- --help``); see ``benchmarks/README.md``.
"""
