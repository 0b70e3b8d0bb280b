"""The results-store commands: `review` (a physicist's sign-off), `merge` (shards' stores into one)
and `dashboard` (the QA pages and the per-patient list from a store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from .application import app
from .options import DASHBOARD_HELP, PATIENTS_HELP


@app.command()
def review(
    plan_uid: Annotated[str, typer.Argument(help="RTPLAN SOP Instance UID of the plan reviewed.")],
    db: Annotated[str, typer.Option("--db", help="Results database holding the plan's check.")],
    reviewer: Annotated[str, typer.Option("--as", help="Who signs off (name of the physicist).")],
    decision: Annotated[str, typer.Option(help="accepted or deviation.")],
    note: Annotated[str, typer.Option(help="Why: what was looked at and decided.")] = "",
) -> None:
    """Record a physicist's sign-off of a plan's latest check: who, when, accepted or deviation."""
    from .. import store

    connection = store.connect(db, create=False)
    saved = store.add_review(connection, plan_uid, reviewer, decision, note)
    connection.close()
    typer.echo(f"review recorded: plan {plan_uid}: {saved['decision']} by {saved['reviewer']} "
               f"at {saved['reviewed_at']}")


@app.command()
def merge(
    sources: Annotated[list[str], typer.Argument(help="Results databases to combine (e.g. one per shard).")],
    db: Annotated[str, typer.Option("--db", help="Database to merge into (created if missing).")],
    on_conflict: Annotated[str, typer.Option(
        help="A check two databases hold with different results: refuse (default), keep (the target's) "
             "or replace (take the source's).")] = "refuse",
) -> None:
    """Combine results databases (of `audit --shard` jobs) without duplicates."""
    from .. import store

    opened = [(source, store.connect(source, read_only=True)) for source in sources]
    target = store.connect(db)
    new_checks, new_reviews = store.merge(target, opened, on_conflict)
    typer.echo(f"merged {len(sources)} databases into {db}: {new_checks} new checks, {new_reviews} new reviews; "
               f"{store.count_rows(target, 'checks')} checks in all")


@app.command()
def dashboard(
    db: Annotated[str, typer.Option("--db", help="Results database to show.")],
    html: Annotated[Path | None, typer.Option("--html", help=DASHBOARD_HELP)] = None,
    patients_csv: Annotated[Path | None, typer.Option("--patients-csv", help=PATIENTS_HELP)] = None,
) -> None:
    """The QA dashboard and/or the per-patient list from a results database."""
    from .. import store
    from .audit import write_store_outputs

    if html is None and patients_csv is None:
        raise InputError(None, "nothing to write: give --html FILE and/or --patients-csv FILE")
    connection = store.connect(db, read_only=True)
    write_store_outputs(connection, html, patients_csv)
    connection.close()
