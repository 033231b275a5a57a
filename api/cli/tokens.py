"""API tokens: ``strongroom tokens create|list|revoke``."""

from __future__ import annotations

from datetime import timedelta

import click

from api.bootstrap import Services
from api.cli.common import archive_settings, fail, run_command
from api.cli.operator import CLI
from archiver.identity.services import IdentityError, Permission


@click.group()
def tokens() -> None:
    """Manage API tokens."""


@tokens.command("create")
@click.argument("username")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
    help="A permission the token may use (repeat); the user must hold it.",
)
@click.option("--days", default=30, show_default=True, type=int, help="Lifetime in days.")
@click.option("--name", default="cli", show_default=True, help="A label for the token.")
def tokens_create(username: str, scopes: tuple[str, ...], days: int, name: str) -> None:
    """Issue a token; its secret is printed once and never stored."""
    settings = archive_settings()

    async def work(services: Services) -> str:
        new = await services.identity.issue_token(
            CLI,
            username,
            name=name,
            scopes=frozenset(Permission(s) for s in scopes),
            lifetime=timedelta(days=days),
        )
        return new.secret

    try:
        click.echo(run_command(settings, work))
    except (ValueError, IdentityError) as exc:
        fail(str(exc), 1)


@tokens.command("list")
@click.argument("username")
def tokens_list(username: str) -> None:
    """List a user's tokens (never their secrets)."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        return [
            f"{t.id}  sr_{t.prefix}_…  {t.name}  expires {t.expires_at:%Y-%m-%d}"
            f"{'  revoked' if t.revoked_at else ''}  {t.scopes}"
            for t in await services.identity.token_list(username)
        ]

    try:
        lines = run_command(settings, work)
    except IdentityError as exc:
        fail(str(exc), 1)
    for line in lines:
        click.echo(line)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token now."""
    settings = archive_settings()

    async def work(services: Services) -> None:
        await services.identity.withdraw_token(CLI, token_id)

    try:
        run_command(settings, work)
    except IdentityError as exc:
        fail(str(exc), 1)
    click.echo(f"token {token_id} revoked")
