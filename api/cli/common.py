"""What every command shares: settings, the archive check, opening the services and
auditing the run, secrets from files or variables, finding a user."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click
import structlog
from sqlalchemy.exc import SQLAlchemyError

from api.bootstrap import (
    Services,
    archive_gaps,
    migrate_database,
    open_services,
    prepare_private_paths,
)
from api.cli.operator import CLI
from api.observability.logging import configure_logging
from api.settings import Settings, SettingsError, load_settings
from archiver.audit.services import Actor, AuditUnavailable
from archiver.core.errors import ArchiverError
from archiver.identity.services import Permission, Role

T = TypeVar("T")
log = structlog.get_logger("strongroom.cli")


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"strongroom: {message}", err=True)
    sys.exit(code)


def command_settings() -> Settings:
    """Load settings once for this command; a bad value ends it with one line."""
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        fail(str(exc))
    configure_logging(settings.log_level)
    return settings


def archive_settings() -> Settings:
    """Settings for a command that works on an existing archive: where there is
    none, end with one line saying where it looked, and create nothing."""
    settings = command_settings()
    require_archive(settings)
    return settings


def require_archive(settings: Settings) -> None:
    try:
        gaps = archive_gaps(settings)
    except (OSError, SQLAlchemyError) as exc:
        fail(f"cannot open the database: {getattr(exc, 'orig', None) or exc}")
    if gaps:
        fail(
            f"no archive here: {'; '.join(gaps)}. Run the command in the directory where "
            f"the server runs, or point it at the archive with STRONGROOM_DATA_DIR (now "
            f"{settings.data_dir}) or the settings named; only `strongroom serve`, "
            "`strongroom migrate` and `strongroom keys init` create an archive",
            1,
        )


def prepare(settings: Settings) -> None:
    """Check the archive's files are private; the embedded default brings its
    schema up to date before any command."""
    try:
        prepare_private_paths(settings)
    except SettingsError as exc:
        fail(str(exc))
    if settings.embedded:
        migrate_schema(settings)


def migrate_schema(settings: Settings) -> tuple[str | None, str | None]:
    try:
        return migrate_database(settings)
    except SettingsError as exc:
        fail(str(exc))


def run_command(settings: Settings, work: Callable[[Services], Awaitable[T]]) -> T:
    """Open the services, run ``work`` with them, record it in the audit trail, close."""
    prepare(settings)
    path = click.get_current_context().command_path.split()[1:]
    action = "cli." + ".".join(path)

    async def main() -> T:
        try:
            services = await open_services(settings)
        except SettingsError as exc:
            fail(str(exc))
        except ArchiverError as exc:
            fail(f"vault: {exc}")
        try:
            result = await work(services)
        except BaseException as exc:
            await _audit_cli(services, action, "failed", type(exc).__name__)
            raise
        else:
            await _audit_cli(services, action, "ok", None)
            return result
        finally:
            await services.close()

    return asyncio.run(main())


async def _audit_cli(services: Services, action: str, outcome: str, reason: str | None) -> None:
    entry = CLI.entry(action, outcome=outcome, reason=reason)  # type: ignore[arg-type]  # always "ok" or "failed"
    try:
        await services.audit.record_durable(entry)
    except AuditUnavailable as exc:
        fail(f"the command could not be recorded in the audit trail: {exc.__cause__ or exc}", 1)


def secret_from(
    value: str | None, file: Path | None, env_name: str | None, what: str
) -> str | None:
    """A secret given inline, in a file, or in an environment variable (one of them)."""
    given = [v for v in (value, file, env_name) if v]
    if len(given) > 1:
        fail(f"give the {what} once: inline, --…-file or --…-env")
    if file is not None:
        try:
            return file.read_text("utf-8").strip()
        except OSError as exc:
            fail(f"cannot read the {what} file: {exc.strerror}")
    if env_name is not None:
        text = os.environ.get(env_name, "").strip()
        if not text:
            fail(f"environment variable {env_name} is empty or unset")
        return text
    return value


def password_from(password_file: Path | None, password_env: str | None) -> str:
    given = secret_from(None, password_file, password_env, "password")
    if given:
        return given
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


ROLE_CHOICE = click.Choice([r.value for r in Role])


async def acting_as(
    services: Services, user: str, permission: Permission
) -> tuple[Actor, set[str] | None]:
    """The user ``user`` (id or username) as the actor of a change a person must
    make (a checker, never its maker), and the accounts on which they hold
    ``permission``; fail when they hold it on none."""
    async with services.sessions() as session:
        found = await services.identity.find_user(session, user)
        principal = await services.identity.principal(session, found, via="cli")
    if not principal.allows(permission):
        fail(f"{principal.username} does not hold {permission.value}", 1)
    actor = Actor(
        id=principal.user_id, name=principal.username, role=principal.role_for(permission)
    )
    return actor, principal.accounts_for(permission)
