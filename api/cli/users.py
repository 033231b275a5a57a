"""Users and their roles: ``strongroom users create|grant|revoke|reset-mfa|list``."""

from __future__ import annotations

from pathlib import Path

import click

from api.bootstrap import Services
from api.cli.common import (
    ROLE_CHOICE,
    archive_settings,
    fail,
    password_from,
    run_command,
)
from api.cli.operator import CLI, granted
from archiver.core.errors import AccountNotFound
from archiver.identity.services import IdentityError, Role


@click.group()
def users() -> None:
    """Manage users and their roles (the first admin can only be made here)."""


@users.command("create")
@click.argument("username")
@click.option("--role", type=ROLE_CHOICE, help="Grant this role too.")
@click.option("--account", help="Limit the role to one business account id.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--password-env", help="Name of an environment variable holding the password.")
def users_create(
    username: str,
    role: str | None,
    account: str | None,
    password_file: Path | None,
    password_env: str | None,
) -> None:
    """Create a user (asks for the password unless a file or variable gives it)."""
    settings = archive_settings()
    password = password_from(password_file, password_env)

    async def work(services: Services) -> list[str]:
        wanted = Role(role) if role is not None else None
        user, result = await services.grants.add_user_as_operator(
            CLI, username, password, wanted, account
        )
        lines = [f"user {user.username} created: {user.id}"]
        if result is not None and wanted is not None:
            lines.append(granted(result, wanted, account, user.username))
        return lines

    try:
        for line in run_command(settings, work):
            click.echo(line)
    except (ValueError, IdentityError, AccountNotFound) as exc:
        fail(str(exc), 1)


@users.command("grant")
@click.argument("username")
@click.argument("role", type=ROLE_CHOICE)
@click.option("--account", help="Limit the role to one business account id.")
def users_grant(username: str, role: str, account: str | None) -> None:
    """Grant a role (sensitive roles need an admin's approval once one exists)."""
    settings = archive_settings()

    async def work(services: Services) -> str:
        result = await services.grants.grant_as_operator(CLI, username, Role(role), account)
        return granted(result, Role(role), account, username.strip().lower())

    try:
        click.echo(run_command(settings, work))
    except (IdentityError, AccountNotFound) as exc:
        fail(str(exc), 1)


@users.command("revoke")
@click.argument("username")
@click.argument("role", type=ROLE_CHOICE)
@click.option("--account", help="The business account id the role was limited to.")
def users_revoke(username: str, role: str, account: str | None) -> None:
    """Revoke a role."""
    settings = archive_settings()

    async def work(services: Services) -> int:
        return await services.grants.revoke(CLI, username, Role(role), account)

    try:
        count = run_command(settings, work)
    except IdentityError as exc:
        fail(str(exc), 1)
    if not count:
        fail(f"{username} does not hold {role} on {account or 'all accounts'}", 1)
    click.echo(f"revoked {role} from {username}")


@users.command("reset-mfa")
@click.argument("username")
def users_reset_mfa(username: str) -> None:
    """Forget a user's authenticator; they enrol again at their next sign-in."""
    settings = archive_settings()

    async def work(services: Services) -> None:
        await services.identity.forget_mfa(CLI, username)

    try:
        run_command(settings, work)
    except IdentityError as exc:
        fail(str(exc), 1)
    click.echo(f"authenticator of {username} reset")


@users.command("list")
def users_list() -> None:
    """List users and their roles."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        lines = []
        for one in await services.identity.user_list():
            roles = ", ".join(f"{g.role}@{g.account_id or 'all'}" for g in one.grants) or "-"
            mfa = "mfa" if one.user.mfa_enrolled_at else "no-mfa"
            lines.append(f"{one.user.id}  {one.user.username}  {mfa}  {roles}")
        return lines

    for line in run_command(settings, work):
        click.echo(line)
