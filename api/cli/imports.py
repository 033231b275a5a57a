"""Chat-export imports: ``strongroom import chat-export|check``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import click

from api.bootstrap import Services
from api.cli.common import (
    archive_settings,
    fail,
    run_command,
)
from api.cli.operator import CLI
from archiver.core.errors import AccountNotFound
from archiver.imports.chat_export import (
    DATE_ORDERS,
    ChatExportError,
    DateOrder,
    DateOrderAmbiguous,
    ParseProblem,
)
from archiver.imports.services import ImportResult, MissingLines


@click.group("import")
def import_() -> None:
    """Import conversations captured elsewhere."""


@import_.command("chat-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--account", "account_id", required=True, help="Account id (from accounts list).")
@click.option("--contact", required=True, help="The customer's phone number, with country code.")
@click.option("--timezone", default="UTC", show_default=True, help="The phone's time zone.")
@click.option("--business-sender", help="The sender name used by the business in the file.")
@click.option("--partial", is_flag=True, help="Import the readable lines even if some are not.")
@click.option(
    "--date-order",
    type=click.Choice(DATE_ORDERS),
    help="Day, month or year first, for a file whose own dates cannot tell.",
)
def import_chat_export(
    file: Path,
    account_id: str,
    contact: str,
    timezone: str,
    business_sender: str | None,
    partial: bool,
    date_order: DateOrder | None,
) -> None:
    """Import a WhatsApp "Export chat" .txt or .zip (Android or iOS)."""
    settings = archive_settings()

    async def work(services: Services) -> ImportResult:
        with file.open("rb") as source:
            return await services.importer.import_export(
                CLI,
                account_id=account_id,
                contact_phone=contact,
                file=source,
                filename=file.name,
                timezone=timezone,
                business_sender=business_sender,
                partial=partial,
                date_order=date_order,
            )

    try:
        result = run_command(settings, work)
    except DateOrderAmbiguous as exc:
        _echo_problems(file, exc.problems)
        fail("nothing was imported (give --date-order dmy, mdy or ymd)", 1)
    except ChatExportError as exc:
        _echo_problems(file, exc.problems)
        fail("nothing was imported (use --partial to import the readable lines)", 1)
    except (AccountNotFound, ValueError) as exc:
        fail(str(exc), 1)
    _echo_problems(file, result.problems, "skipped: ")
    _echo_problems(file, result.warnings, "warning: ")
    click.echo(f"dates read as {result.date_order_reason}")
    click.echo(
        f"imported {result.imported} of {result.messages} messages "
        f"({result.duplicates} already present, {result.media} media files) "
        f"for contact {result.contact_id}"
    )


def _echo_problems(file: Path, problems: Iterable[ParseProblem], kind: str = "") -> None:
    """One line on stderr per problem: file, line, reason and the line's start."""
    for problem in problems:
        where = f"{file.name}:{problem.line_number}" if problem.line_number else file.name
        quoted = f": {problem.text!r}" if problem.text else ""
        click.echo(f"{where}: {kind}{problem.reason}{quoted}", err=True)


@import_.command("check")
def import_check() -> None:
    """List earlier imports whose conversation lacks some of their file's lines.

    Imports before per-conversation deduplication skipped a line that another
    conversation of the same account already held. Import each file listed
    again, for the same contact: that adds exactly the missing messages. Exits
    1 when any is listed.
    """
    settings = archive_settings()

    async def work(services: Services) -> list[MissingLines]:
        return await services.importer.missing_lines()

    gaps = run_command(settings, work)
    for gap in gaps:
        accounts = ", ".join(gap.accounts) or "unknown"
        click.echo(
            f"import {gap.object_id} of {gap.imported_at:%Y-%m-%d %H:%M} UTC, file sha256 "
            f"{gap.file_sha256}: {gap.missing} of {gap.messages} messages missing from contact "
            f"{gap.contact_id} (account {accounts}); import the file again for this contact"
        )
    if gaps:
        click.echo(f"{len(gaps)} imports lack lines; re-import them as listed", err=True)
        sys.exit(1)
    click.echo("every imported file's messages are in its conversation")
