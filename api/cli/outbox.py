"""The outbox from the command line: ``strongroom outbox send|list|show``.

The operator sends on behalf of a user (``--sender``), whose ``outbox.send``
permission the policy checks like any other; the audit trail names both.
"""

from __future__ import annotations

import click
import msgspec

from api.bootstrap import Services
from api.cli.common import archive_settings, fail, run_command
from api.cli.operator import CLI
from archiver.identity.services import IdentityError
from policy.decision import ContentKind, Source
from policy.errors import OutboxError
from policy.outbox import ItemView, MessageContent, SendRequest


@click.group()
def outbox() -> None:
    """Send messages through the outbox, each decided by the send policy."""


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--var takes NAME=VALUE, not {pair!r}")
        found[name] = value
    return found


def _line(view: ItemView) -> str:
    outcome = (view.decision or {}).get("outcome", "-")
    return (
        f"{view.id}  {view.state:<11} {view.kind:<8} {view.category:<14} decision:{outcome}  "
        f"account {view.account_id}  created {view.created_at:%Y-%m-%d %H:%M:%S}"
    )


def _details(view: ItemView) -> list[str]:
    lines = [_line(view)]
    for reason in (view.decision or {}).get("reasons", []):
        lines.append(f"  {reason['effect']:<5} {reason['code']}: {reason['message']}")
    for event in view.events:
        note = f"  ({event.note})" if event.note else ""
        lines.append(
            f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.from_state or '-'} -> {event.to_state}"
            f"  by {event.actor}{note}"
        )
    if view.error_code is not None:
        lines.append(f"  error {view.error_code}: {view.error_title}")
    return lines


@outbox.command("send")
@click.argument("account_id")
@click.argument("to")
@click.option("--sender", required=True, help="The user (with outbox.send) it is sent for.")
@click.option("--text", help="A free-form text (only inside the customer service window).")
@click.option("--template", help="An approved template's name.")
@click.option("--language", help="The template's language code (en_US, ...).")
@click.option("--var", "variables", multiple=True, help="A template variable, NAME=VALUE.")
@click.option("--key", "idempotency_key", required=True, help="Its idempotency key.")
def outbox_send(
    account_id: str,
    to: str,
    sender: str,
    text: str | None,
    template: str | None,
    language: str | None,
    variables: tuple[str, ...],
    idempotency_key: str,
) -> None:
    """Queue a message to TO from ACCOUNT_ID; prints the item and its decision."""
    if (text is None) == (template is None):
        fail("give either --text or --template")
    content = (
        MessageContent(kind=ContentKind.TEXT, text=text)
        if text is not None
        else MessageContent(
            kind=ContentKind.TEMPLATE,
            template=template,
            language=language,
            variables=_variables(variables),
        )
    )
    request = SendRequest(
        account_id=account_id,
        to=to,
        content=content,
        idempotency_key=idempotency_key,
        source=Source.API,
    )
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        sender_id = await services.identity.user_id_of(sender)
        return _details(await services.outbox.submit(CLI, sender_id, request))

    try:
        lines = run_command(settings, work)
    except (OutboxError, IdentityError, msgspec.ValidationError) as exc:
        fail(str(exc), 1)
    for line in lines:
        click.echo(line)


@outbox.command("list")
@click.option("--account", "account_id", help="Only this business number's items.")
@click.option("--state", help="Only items in this state (held, sent, failed, ...).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def outbox_list(account_id: str | None, state: str | None, limit: int) -> None:
    """The newest items, one a line."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        views = await services.outbox.list(None, account_id=account_id, state=state, limit=limit)
        return [_line(view) for view in views]

    for line in run_command(settings, work):
        click.echo(line)


@outbox.command("show")
@click.argument("item_id")
def outbox_show(item_id: str) -> None:
    """One item: its decision's reasons and every move it made (not its content)."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        return _details(await services.outbox.get(None, item_id))

    try:
        lines = run_command(settings, work)
    except OutboxError as exc:
        fail(str(exc), 1)
    for line in lines:
        click.echo(line)
