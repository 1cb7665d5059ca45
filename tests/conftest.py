"""Shared fixtures: one `engine` fixture parametrized over DuckDB, PostgreSQL and Spark.

PostgreSQL is a real throwaway server (initdb/pg_ctl on a free loopback port) started once per test run;
every test gets its own database. Spark runs in local mode; every test gets its own warehouse folder.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from medlake.engines import open_engine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ENGINES = ["duckdb", "postgres", "spark"]
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster():
    from medlake.engines.postgres import TempCluster

    cluster = TempCluster().start()
    yield cluster
    cluster.stop()


def make_engine(kind: str, request, tmp_path: Path):
    if kind == "duckdb":
        return open_engine(f"duckdb:{tmp_path / 'store.duckdb'}")
    if kind == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        return open_engine(cluster.create_database(f"t{next(_db_counter)}"))
    if kind == "spark":
        return open_engine(f"spark:{tmp_path / 'warehouse'}")
    raise ValueError(kind)


@pytest.fixture(params=[pytest.param(k, marks=getattr(pytest.mark, k) if k != "duckdb" else ()) for k in ENGINES])
def engine(request, tmp_path):
    """A fresh, empty store on each engine."""
    eng = make_engine(request.param, request, tmp_path)
    yield eng
    eng.close()


@pytest.fixture
def duck(tmp_path):
    """A fresh DuckDB store, for tests that are about something other than the engine."""
    eng = open_engine(f"duckdb:{tmp_path / 'store.duckdb'}")
    yield eng
    eng.close()
