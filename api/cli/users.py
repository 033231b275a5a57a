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
    user_named,
)
from api.cli.operator import CLI_ACTOR, grant_as_operator
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
        async with services.sessions() as session, session.begin():
            user = await services.identity.create_user(
                session, username, password, created_by=CLI_ACTOR
            )
            lines = [f"user {user.username} created: {user.id}"]
            if role is not None:
                lines.append(await grant_as_operator(services, session, user, Role(role), account))
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
        async with services.sessions() as session, session.begin():
            user = await user_named(services, session, username)
            return await grant_as_operator(services, session, user, Role(role), account)

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
        async with services.sessions() as session, session.begin():
            user = await user_named(services, session, username)
            return await services.identity.revoke_grant(session, user, Role(role), account)

    count = run_command(settings, work)
    if not count:
        fail(f"{username} does not hold {role} on {account or 'all accounts'}", 1)
    click.echo(f"revoked {role} from {username}")


@users.command("reset-mfa")
@click.argument("username")
def users_reset_mfa(username: str) -> None:
    """Forget a user's authenticator; they enrol again at their next sign-in."""
    settings = archive_settings()

    async def work(services: Services) -> None:
        async with services.sessions() as session, session.begin():
            await services.identity.reset_mfa(
                session, await user_named(services, session, username)
            )

    run_command(settings, work)
    click.echo(f"authenticator of {username} reset")


@users.command("list")
def users_list() -> None:
    """List users and their roles."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        lines = []
        async with services.sessions() as session:
            for user in await services.identity.users(session):
                grants = await services.identity.active_grants(session, user.id)
                roles = ", ".join(f"{g.role}@{g.account_id or 'all'}" for g in grants) or "-"
                mfa = "mfa" if user.mfa_enrolled_at else "no-mfa"
                lines.append(f"{user.id}  {user.username}  {mfa}  {roles}")
        return lines

    for line in run_command(settings, work):
        click.echo(line)
