"""Data quality: every OHDSI DQD check as data, compiled to a few set-based queries per table.

`checks(version)` lists the checks; `run(engine, ...)` runs them (incremental, resumable) and writes
`results.json` and a self-contained HTML report.
"""
from medlake.quality.checks import Check, checks, dqd_vs_spec

__all__ = ["Check", "checks", "dqd_vs_spec"]
