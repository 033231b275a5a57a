"""The consent ledger: ``strongroom consent record|list|export``.

The operator records and reads with the archive's full authority; each entry and
each read is in the audit trail (``consent.record``, ``consent.read``,
``consent.export``), the evidence sealed.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from api.bootstrap import Services
from api.cli.common import archive_settings, fail, run_command
from api.cli.operator import CLI
from policy.consent import ConsentAction, ConsentMethod, ConsentView
from policy.decision import Category
from policy.errors import ConsentError


@click.group()
def consent() -> None:
    """Record and read contacts' consent, per category."""


def _line(view: ConsentView) -> str:
    return (
        f"{view.id}  {view.occurred_at:%Y-%m-%d %H:%M:%S}  {view.category:<14} "
        f"{view.action:<7} {view.how}  account {view.account_id or '-'}  "
        f"recorded by {view.recorded_by}"
    )


@consent.command("record")
@click.argument("account_id")
@click.option("--phone", help="The contact's number, international (found or created).")
@click.option("--contact", "contact_id", help="Or the contact's id.")
@click.option("--category", required=True, type=click.Choice([c.value for c in Category]))
@click.option("--action", required=True, type=click.Choice([a.value for a in ConsentAction]))
@click.option("--method", required=True, type=click.Choice([m.value for m in ConsentMethod]))
@click.option("--evidence", required=True, help="What shows the consent (sealed).")
@click.option(
    "--occurred-at",
    required=True,
    help="When it was given or withdrawn, ISO 8601 with its offset (2026-11-03T10:00:00+00:00).",
)
def consent_record(
    account_id: str,
    phone: str | None,
    contact_id: str | None,
    category: str,
    action: str,
    method: str,
    evidence: str,
    occurred_at: str,
) -> None:
    """Record an opt-in or an opt-out for a contact of ACCOUNT_ID; prints the entry."""
    if (phone is None) == (contact_id is None):
        fail("give either --phone or --contact")
    try:
        when = datetime.fromisoformat(occurred_at)
    except ValueError:
        fail(f"--occurred-at {occurred_at!r} is not an ISO 8601 time")

    async def work(services: Services) -> str:
        row = await services.consent.record(
            CLI,
            account_id,
            category=category,
            action=action,
            method=method,
            evidence=evidence,
            occurred_at=when,
            phone=phone,
            contact_id=contact_id,
        )
        return f"entry {row.id}: contact {row.contact_id} {row.action} {row.category}"

    try:
        click.echo(run_command(archive_settings(), work))
    except ConsentError as exc:
        fail(str(exc), 1)


@consent.command("list")
@click.argument("contact_id")
def consent_list(contact_id: str) -> None:
    """The contact's entries, oldest first (the evidence stays sealed: see export)."""

    async def work(services: Services) -> list[str]:
        return [_line(v) for v in await services.consent.entries(CLI, None, contact_id)]

    for line in run_command(archive_settings(), work):
        click.echo(line)


@consent.command("export")
@click.argument("contact_id")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the JSON here (default: standard output).",
)
def consent_export(contact_id: str, output: Path | None) -> None:
    """The contact's entries with their evidence, as JSON."""

    async def work(services: Services) -> str:
        entries = await services.consent.export(CLI, None, contact_id)
        return json.dumps({"contact_id": contact_id, "entries": entries}, ensure_ascii=False)

    text = run_command(archive_settings(), work)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", "utf-8")
        click.echo(f"exported the consent of contact {contact_id} to {output}")
