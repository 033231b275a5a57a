"""The template registry: ``strongroom templates list|show|create|submit|approve|reject``.

Maker and checker are different people: the operator makes and submits (or a
user named with ``--as``), and a user named with ``--as``, who holds
``templates.approve`` on the template's account, approves or rejects; the
registry refuses a checker who made or submitted the template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from api.bootstrap import Services
from api.cli.common import acting_as, archive_settings, fail, run_command
from api.cli.operator import CLI
from archiver.audit.services import Actor
from archiver.identity.services import IdentityError, Permission
from policy.errors import TemplateError
from policy.models import MessageTemplate


@click.group()
def templates() -> None:
    """Message templates and their maker-checker approval."""


def _line(row: MessageTemplate) -> str:
    return (
        f"{row.id}  {row.status:<9} meta:{row.meta_status or '-':<9} {row.category:<14} "
        f"{row.name} ({row.language})  waba {row.waba_id}"
    )


def _details(row: MessageTemplate) -> list[str]:
    lines = [_line(row), f"  made by {row.created_by} on {row.created_at:%Y-%m-%d %H:%M:%S}"]
    if row.submitted_by:
        lines.append(f"  submitted by {row.submitted_by}")
    if row.decided_by:
        lines.append(f"  {row.status} by {row.decided_by}: {row.decision_comment or ''}".rstrip())
    lines.append(f"  parameters: {row.parameters}")
    lines.append(f"  components: {row.components}")
    return lines


def _content(path: Path) -> tuple[Any, Any]:
    """The components and parameters in ``path``: ``{"components": [...],
    "parameters": [{"name", "type"}, ...]}``."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except ValueError as exc:
        fail(f"{path} is not JSON: {exc}")
    if not isinstance(data, dict) or "components" not in data:
        fail(f'{path} needs an object {{"components": [...], "parameters": [...]}}')
    return data["components"], data.get("parameters", [])


async def _maker(services: Services, user: str | None) -> tuple[Actor, set[str] | None]:
    if user is None:
        return CLI, None
    return await acting_as(services, user, Permission.TEMPLATES_MANAGE)


def _run(work: Any) -> list[str]:
    try:
        lines: list[str] = run_command(archive_settings(), work)
    except (TemplateError, IdentityError) as exc:
        fail(str(exc), 1)
    return lines


AS_MAKER = click.option("--as", "user", help="The user who makes it (default: the operator).")
AS_CHECKER = click.option(
    "--as", "user", required=True, help="The checker: a user with templates.approve."
)


@templates.command("list")
@click.option("--account", "account_id", help="Only this business number's templates.")
def templates_list(account_id: str | None) -> None:
    """The templates, one a line, by name and language."""

    async def work(services: Services) -> list[str]:
        return [_line(row) for row in await services.templates.list_for(None, account_id)]

    for line in _run(work):
        click.echo(line)


@templates.command("show")
@click.argument("template_id", type=int)
def templates_show(template_id: int) -> None:
    """One template: both statuses, who made, submitted and decided it, its content."""

    async def work(services: Services) -> list[str]:
        return _details(await services.templates.get(None, template_id))

    for line in _run(work):
        click.echo(line)


@templates.command("create")
@click.argument("account_id")
@click.argument("name")
@click.option("--language", required=True, help="Its language code (en, en_US, ...).")
@click.option(
    "--category",
    required=True,
    type=click.Choice(["marketing", "utility", "authentication"]),
)
@click.option(
    "--file",
    "content",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help='JSON: {"components": [...as Meta takes them], "parameters": [{"name", "type"}]}.',
)
@AS_MAKER
def templates_create(
    account_id: str, name: str, language: str, category: str, content: Path, user: str | None
) -> None:
    """A draft template NAME for ACCOUNT_ID's WhatsApp Business Account; prints its id."""
    archive_settings()  # where there is no archive, say so before reading the file
    components, parameters = _content(content)

    async def work(services: Services) -> list[str]:
        actor, accounts = await _maker(services, user)
        row = await services.templates.create(
            actor,
            accounts,
            account_id,
            name=name,
            language=language,
            category=category,
            components=components,
            parameters=parameters,
        )
        return [f"template {row.id} created: {row.name} ({row.language}), draft"]

    for line in _run(work):
        click.echo(line)


@templates.command("submit")
@click.argument("template_id", type=int)
@AS_MAKER
def templates_submit(template_id: int, user: str | None) -> None:
    """Submit a draft for a checker's approval."""

    async def work(services: Services) -> list[str]:
        actor, accounts = await _maker(services, user)
        row = await services.templates.submit(actor, accounts, template_id)
        return [f"template {row.id} submitted"]

    for line in _run(work):
        click.echo(line)


@templates.command("approve")
@click.argument("template_id", type=int)
@AS_CHECKER
@click.option("--comment", default="", help="The checker's comment.")
def templates_approve(template_id: int, user: str, comment: str) -> None:
    """Approve a submitted template, as a checker who neither made nor submitted it."""

    async def work(services: Services) -> list[str]:
        actor, accounts = await acting_as(services, user, Permission.TEMPLATES_APPROVE)
        row = await services.templates.approve(actor, accounts, template_id, comment)
        return [f"template {row.id} approved by {actor.name}"]

    for line in _run(work):
        click.echo(line)


@templates.command("reject")
@click.argument("template_id", type=int)
@AS_CHECKER
@click.option("--comment", required=True, help="Why it is rejected.")
def templates_reject(template_id: int, user: str, comment: str) -> None:
    """Reject a submitted template with a comment; its maker may edit it again."""

    async def work(services: Services) -> list[str]:
        actor, accounts = await acting_as(services, user, Permission.TEMPLATES_APPROVE)
        row = await services.templates.reject(actor, accounts, template_id, comment)
        return [f"template {row.id} rejected by {actor.name}"]

    for line in _run(work):
        click.echo(line)
