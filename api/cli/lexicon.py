"""The compliance lexicon: ``strongroom lexicon add|list|remove``."""

from __future__ import annotations

import click

from api.bootstrap import Services
from api.cli.common import (
    archive_settings,
    fail,
    run_command,
)
from api.cli.operator import CLI
from policy.errors import LexiconError
from policy.lexicon import LexiconAction
from policy.models import LexiconTerm


@click.group()
def lexicon() -> None:
    """Manage the compliance lexicon (sensitive terms that flag, hold or block messages)."""


@lexicon.command("add")
@click.argument("term")
@click.option(
    "--action",
    type=click.Choice([a.value for a in LexiconAction]),
    default=LexiconAction.FLAG.value,
    show_default=True,
    help="What the outbox does with a message holding the term (the archive flags all).",
)
def lexicon_add(term: str, action: str) -> None:
    """Add a term; prints its id."""
    settings = archive_settings()

    async def work(services: Services) -> str:
        row = await services.lexicon.add(CLI, term, action)
        return f"added term {row.id}: {row.term} ({row.action})"

    try:
        click.echo(run_command(settings, work))
    except LexiconError as exc:
        fail(str(exc), 1)


def _lexicon_line(row: LexiconTerm) -> str:
    line = f"{row.id}  {row.action}  {row.term}  added {row.added_at:%Y-%m-%d} by {row.added_by}"
    if row.removed_at is not None:
        line += f"  removed {row.removed_at:%Y-%m-%d} by {row.removed_by}"
    return line


@lexicon.command("list")
@click.option("--all", "include_removed", is_flag=True, help="Include removed terms.")
def lexicon_list(include_removed: bool) -> None:
    """List the active terms (with --all, removed ones too)."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        return [_lexicon_line(row) for row in await services.lexicon.rows(removed=include_removed)]

    for line in run_command(settings, work):
        click.echo(line)


@lexicon.command("remove")
@click.argument("term_id", type=int)
def lexicon_remove(term_id: int) -> None:
    """Remove a term; it stays in the history (list --all)."""
    settings = archive_settings()

    async def work(services: Services) -> None:
        await services.lexicon.remove(CLI, term_id)

    try:
        run_command(settings, work)
    except LexiconError as exc:
        fail(str(exc), 1)
    click.echo(f"term {term_id} removed")
