"""The `medlake` command: a thin caller of the layers below.

Exit codes: 0 success, 1 failure (one clear line on stderr), 2 usage error.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medlake import config as config_mod

app = typer.Typer(help="medlake: a hospital data center on the OMOP CDM.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
vocab_app = typer.Typer(help="Load and inspect OMOP vocabularies.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")

out = Console()
err = Console(stderr=True)


class State:
    store: Optional[str] = None
    config: Optional[str] = None


state = State()


@app.callback()
def _root(
    store: Optional[str] = typer.Option(None, "--store", help="Store URL: duckdb:PATH, postgresql://…, spark:DIR."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config file (default: ./medlake.toml)."),
) -> None:
    state.store = store
    state.config = str(config) if config else None


def settings() -> config_mod.Config:
    return config_mod.load(state.config, state.store)


def engine():
    from medlake.engines import open_engine

    return open_engine(settings().store)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


@app.command()
def init(cdm_version: Optional[str] = typer.Option(None, "--cdm-version", help="OMOP CDM version: 5.4 or 5.3.")):
    """Create an OMOP CDM store (tables generated from the official spec)."""
    from medlake.cdm import store

    cfg = settings()
    version = cdm_version or cfg.cdm_version
    eng = engine()
    try:
        created = store.init(eng, version)
    finally:
        eng.close()
    out.print(f"OMOP CDM v{version} at {cfg.store}: {len(created)} table(s) created")


@vocab_app.command("load")
def vocab_load(
    folder: Optional[Path] = typer.Argument(None, help="Unzipped Athena download (tab-separated files)."),
    demo: bool = typer.Option(False, "--demo", help="Load the demo vocabulary shipped with medlake."),
):
    """Load an Athena vocabulary download (or the shipped demo subset) into the store."""
    from medlake.cdm import store, vocab

    if folder is None and not demo:
        raise typer.BadParameter("give a FOLDER or --demo")
    folder = vocab.demo_vocabulary_dir() if demo else folder
    eng = engine()
    try:
        version = store.info(eng).get("cdm_version") or settings().cdm_version
        with progress() as bar:
            task = bar.add_task("vocabulary", total=None)

            def tick(name, done, total):
                bar.update(task, description=name, completed=done, total=total)

            report = vocab.load(eng, folder, version, progress=tick)
    finally:
        eng.close()
    t = Table(title=f"vocabulary {report.version or '(no version row)'} from {folder}")
    t.add_column("table")
    t.add_column("rows in file", justify="right")
    t.add_column("rows loaded", justify="right")
    for name, n in report.files.items():
        t.add_row(name, f"{n:,}", f"{report.loaded[name]:,}")
    out.print(t)
    if report.missing:
        out.print(f"not in this download (left as they were): {', '.join(report.missing)}")
    out.print("row counts verified" if report.verified else "[red]row counts differ[/red]")


@app.command()
def status():
    """Show the store: engine, location, CDM version, vocabulary version, rows per table."""
    from medlake.cdm import store

    eng = engine()
    try:
        s = store.status(eng)
    finally:
        eng.close()
    out.print(f"store      {s.url}")
    out.print(f"engine     {s.engine}")
    if not s.cdm_version:
        out.print("CDM        not initialised: run `medlake init`")
        return
    out.print(f"CDM        OMOP v{s.cdm_version}")
    out.print(f"vocabulary {s.vocabulary_version or 'not loaded: run `medlake vocab load DIR` or `--demo`'}")
    t = Table(title="rows per table")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in s.counts.items():
        if n:
            t.add_row(name, f"{n:,}")
    empty = [n for n, c in s.counts.items() if not c]
    out.print(t)
    out.print(f"{len(empty)} empty table(s)")


def main() -> None:
    """Typer handles --help and usage errors (exit 2); medlake's own errors become one line and exit 1."""
    from medlake.cdm.vocab import VocabError
    from medlake.engines.base import EngineError

    try:
        app()
    except (EngineError, VocabError, config_mod.ConfigError, ValueError, OSError, KeyError) as e:
        if os.environ.get("MEDLAKE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err.print(f"error: {msg}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
