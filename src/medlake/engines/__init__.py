"""Engines: one protocol, three databases (DuckDB default, PostgreSQL, Spark).

A store is named by a URL: `duckdb:path/to/file.duckdb`, `postgresql://user@host:port/db`,
`spark:path/to/warehouse`.
"""
from __future__ import annotations

from medlake.engines.base import Column, Engine, EngineError, transpile

__all__ = ["Column", "Engine", "EngineError", "open_engine", "store_url", "transpile"]


def open_engine(url: str, read_only: bool = False) -> Engine:
    """Open the store a URL names; `read_only`: to read only (a DuckDB file then opens beside other readers)."""
    if url.startswith(("postgresql://", "postgres://")):
        from medlake.engines.postgres import PostgresEngine

        return PostgresEngine(url)
    if url.startswith("spark:"):
        from medlake.engines.spark import SparkEngine

        return SparkEngine(url.removeprefix("spark:"), read_only=read_only)
    if url.startswith("duckdb:"):
        from medlake.engines.duckdb import DuckDBEngine

        path, _, query = url.removeprefix("duckdb:").partition("?")
        opts = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        return DuckDBEngine(path or ":memory:", memory_limit=opts.get("memory_limit"),
                            read_only=read_only and bool(path) and path != ":memory:")
    raise _unknown(url)


def store_url(url: str) -> str:
    """The URL the store `url` names is known by once open (`Engine.url`: its runs and records name it so), without
    opening it: a command that only reads the quality runs' files needs no connection or Spark session."""
    if url.startswith(("postgresql://", "postgres://")):
        return url
    from pathlib import Path

    if url.startswith("spark:"):
        return f"spark:{Path(url.removeprefix('spark:')).resolve()}"
    if url.startswith("duckdb:"):
        path = url.removeprefix('duckdb:').partition('?')[0] or ':memory:'
        return f"duckdb:{path if path == ':memory:' else Path(path).resolve()}"
    raise _unknown(url)


def _unknown(url: str) -> EngineError:
    return EngineError(
        f"unknown store {url!r}: use duckdb:PATH, postgresql://USER@HOST:PORT/DB or spark:WAREHOUSE_DIR"
    )
