"""The ``strongroom`` command line."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import NoReturn, TypeVar

import click
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from api.bootstrap import (
    Services,
    archive_gaps,
    load_root_keys,
    migrate_database,
    open_services,
    pending_key_file,
    prepare_private_paths,
    write_key_file,
)
from api.cli.operator import CLI_ACTOR, grant_as_operator
from api.observability.logging import configure_logging
from api.settings import Settings, SettingsError, load_settings
from archiver.audit.services import AuditEntry, AuditUnavailable, format_time
from archiver.core.errors import AccountExists, AccountNotFound, ArchiverError
from archiver.crypto.keyring import new_root_key, root_key_id
from archiver.identity.models import User
from archiver.identity.services import IdentityError, Permission, Role
from archiver.imports.chat_export import (
    DATE_ORDERS,
    ChatExportError,
    DateOrder,
    DateOrderAmbiguous,
    ParseProblem,
)
from archiver.imports.services import ImportResult, MissingLines
from archiver.search.blind_index import normalize_phone
from policy.errors import LexiconError
from policy.lexicon import LexiconAction
from policy.models import LexiconTerm

T = TypeVar("T")
log = structlog.get_logger("strongroom.cli")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"strongroom: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    """Load settings once for this command; a bad value ends it with one line."""
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        _fail(str(exc))
    configure_logging(settings.log_level)
    return settings


def _archive() -> Settings:
    """Settings for a command that works on an existing archive: where there is
    none, end with one line saying where it looked, and create nothing."""
    settings = _settings()
    _require_archive(settings)
    return settings


def _require_archive(settings: Settings) -> None:
    try:
        gaps = archive_gaps(settings)
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"cannot open the database: {getattr(exc, 'orig', None) or exc}")
    if gaps:
        _fail(
            f"no archive here: {'; '.join(gaps)}. Run the command in the directory where "
            f"the server runs, or point it at the archive with STRONGROOM_DATA_DIR (now "
            f"{settings.data_dir}) or the settings named; only `strongroom serve`, "
            "`strongroom migrate` and `strongroom keys init` create an archive",
            1,
        )


def _prepare(settings: Settings) -> None:
    """Check the archive's files are private; the embedded default brings its
    schema up to date before any command."""
    try:
        prepare_private_paths(settings)
    except SettingsError as exc:
        _fail(str(exc))
    if settings.embedded:
        _migrate(settings)


def _migrate(settings: Settings) -> tuple[str | None, str | None]:
    try:
        return migrate_database(settings)
    except SettingsError as exc:
        _fail(str(exc))


def _run(settings: Settings, work: Callable[[Services], Awaitable[T]]) -> T:
    """Open the services, run ``work`` with them, record it in the audit trail, close."""
    _prepare(settings)
    path = click.get_current_context().command_path.split()[1:]
    action = "cli." + ".".join(path)

    async def main() -> T:
        try:
            services = await open_services(settings)
        except SettingsError as exc:
            _fail(str(exc))
        except ArchiverError as exc:
            _fail(f"vault: {exc}")
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
    entry = AuditEntry(
        actor=CLI_ACTOR,
        action=action,
        outcome=outcome,  # type: ignore[arg-type]  # always "ok" or "failed"
        reason=reason,
    )
    try:
        await services.audit.record_durable(entry)
    except AuditUnavailable as exc:
        _fail(f"the command could not be recorded in the audit trail: {exc.__cause__ or exc}", 1)


@click.group()
def main() -> None:
    """Strongroom: compliance archive for WhatsApp Business."""
    # Whatever the archive creates (database, WAL, key, vault files, exports) is
    # its owner's alone, even where a creation does not say so itself.
    os.umask(0o077)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
def serve(host: str, port: int) -> None:
    """Run the HTTP API, webhooks and web console."""
    import uvicorn

    from api.app import create_asgi_app
    from api.http.transport import guarded_protocol

    settings = _settings()
    _prepare(settings)
    log.info("serving", host=host, port=port, mode=settings.mode, public_url=settings.public_url)
    uvicorn.run(
        create_asgi_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # The C event loop and HTTP parser (about half the cost of a small
        # request), with deadlines on each request's headers and body.
        loop="uvloop",
        http=guarded_protocol(settings.http_header_timeout, settings.http_body_timeout),
        # No route is a websocket, and the guarded protocol never hands a
        # connection over to another.
        ws="none",
        # Past this many open connections, requests are answered 503.
        limit_concurrency=settings.http_max_connections,
        # uvicorn would believe X-Forwarded-* from any local address (its default
        # forwarded_allow_ips is 127.0.0.1): the app believes only the proxies in
        # STRONGROOM_TRUSTED_PROXIES.
        proxy_headers=False,
    )


@main.command()
@click.option(
    "--embedded",
    is_flag=True,
    hidden=True,
    help="Run as the embedded server's child: stop when stdin closes; yield the CPU.",
)
def worker(embedded: bool) -> None:
    """Run the journal projection and the scheduled jobs (media fetch, vault reconciliation)."""
    from api.worker import run_worker

    _run(_archive(), lambda services: run_worker(services, embedded=embedded))


@main.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    before, after = _migrate(_settings())
    if before == after:
        click.echo(f"database schema is up to date (revision {after})")
    else:
        click.echo(f"database schema migrated from revision {before or 'none'} to {after}")


@main.group()
def keys() -> None:
    """Manage the root key and subject keys."""


@keys.command("init")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the key here.")
def keys_init(out: Path | None) -> None:
    """Create a new root key file (mode 0600); never overwrites one."""
    settings = _settings()
    if settings.master_key is not None and out is None:
        _fail("the root key is already given by STRONGROOM_MASTER_KEY; use --out for a new file")
    path = out or settings.master_key_file
    if path.exists():
        _fail(f"{path} already exists; keys init never overwrites a root key", 1)
    key = new_root_key()
    write_key_file(path, key)
    click.echo(f"root key {root_key_id(key)} written to {path}")


@keys.command("status")
def keys_status() -> None:
    """Show the root key id and how many subject keys each root key wraps."""
    settings = _archive()

    async def work(services: Services) -> list[str]:
        keyring = services.keyring
        async with services.sessions() as session:
            counts = await keyring.status(session)
        source = "STRONGROOM_MASTER_KEY" if settings.master_key else str(settings.master_key_file)
        click.echo(f"root key: {keyring.root_key_id} (from {source})")
        destroyed = counts.pop("destroyed")
        for kid, n in sorted(counts.items()):
            click.echo(f"subject keys wrapped by {kid}: {n}")
        click.echo(f"destroyed subject keys: {destroyed}")
        if len(keyring.loaded_root_key_ids) > 1:
            click.echo("a rotation was interrupted: run `strongroom keys rotate` to finish it")
        return [k for k in counts if k not in keyring.loaded_root_key_ids]

    unknown = _run(settings, work)
    if unknown:
        _fail(f"subject keys are wrapped by root keys that are not loaded: {', '.join(unknown)}", 1)


@keys.command("rotate")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the new key when the current one comes from STRONGROOM_MASTER_KEY.",
)
def keys_rotate(out: Path | None) -> None:
    """Re-wrap every subject key under a new root key; no object is rewritten."""
    settings = _archive()
    if settings.master_key is not None:
        if out is None:
            _fail("the root key comes from STRONGROOM_MASTER_KEY; give --out FILE for the new key")
        if out.exists():
            _fail(f"{out} already exists", 1)
        new_key = new_root_key()
        write_key_file(out, new_key)
    else:
        pending = pending_key_file(settings)
        if pending.exists():
            new_key = load_root_keys(settings)[-1]
        else:
            new_key = new_root_key()
            write_key_file(pending, new_key)

    async def work(services: Services) -> int:
        async with services.sessions() as session, session.begin():
            return await services.keyring.rotate(session, new_key)

    count = _run(settings, work)
    if settings.master_key is None:
        os.replace(pending_key_file(settings), settings.master_key_file)
        dir_fd = os.open(settings.master_key_file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        click.echo(f"re-wrapped {count} subject keys under root key {root_key_id(new_key)}")
    else:
        click.echo(
            f"re-wrapped {count} subject keys under root key {root_key_id(new_key)}; "
            f"now set STRONGROOM_MASTER_KEY_FILE={out}, unset STRONGROOM_MASTER_KEY and restart"
        )


@main.group()
def vault() -> None:
    """Inspect the vault."""


@vault.command("verify")
def vault_verify() -> None:
    """Re-read and re-hash every sealed object, and check every record's binding to
    its object; exit 1 on any drift or binding failure."""
    settings = _archive()

    async def work(services: Services) -> bool:
        async with services.sessions() as session:
            report = await services.vault.verify(session)
            bindings = await services.records.verify(session)
        for drift in report.drift:
            click.echo(f"DRIFT {drift.problem} {drift.object_key}: {drift.detail}")
        for key in report.unrecorded:
            click.echo(f"WARNING unrecorded object {key} (no database record)")
        for record_id, reason in bindings.failures:
            click.echo(f"BINDING record {record_id}: {reason}")
        click.echo(
            f"checked {report.checked} objects: {len(report.drift)} drift, "
            f"{len(report.unrecorded)} unrecorded; "
            f"{bindings.checked} records: {len(bindings.failures)} binding failures"
        )
        return report.clean and not bindings.failures

    if not _run(settings, work):
        sys.exit(1)


def _secret(value: str | None, file: Path | None, env_name: str | None, what: str) -> str | None:
    """A secret given inline, in a file, or in an environment variable (one of them)."""
    given = [v for v in (value, file, env_name) if v]
    if len(given) > 1:
        _fail(f"give the {what} once: inline, --…-file or --…-env")
    if file is not None:
        try:
            return file.read_text("utf-8").strip()
        except OSError as exc:
            _fail(f"cannot read the {what} file: {exc.strerror}")
    if env_name is not None:
        text = os.environ.get(env_name, "").strip()
        if not text:
            _fail(f"environment variable {env_name} is empty or unset")
        return text
    return value


@main.group()
def accounts() -> None:
    """Manage the WhatsApp business phone numbers that are captured."""


@accounts.command("add")
@click.option("--phone-number-id", required=True, help="Meta's id of the business phone number.")
@click.option("--display-phone-number", required=True, help="The number as customers see it.")
@click.option("--app-secret", help="The Meta app secret (prefer --app-secret-file or -env).")
@click.option("--app-secret-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--app-secret-env", help="Name of an environment variable holding the secret.")
@click.option("--verify-token", help="The webhook verify token you set in Meta's dashboard.")
@click.option("--verify-token-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--verify-token-env", help="Name of an environment variable holding the token.")
@click.option("--access-token", help="System-user token for media downloads.")
@click.option("--access-token-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--access-token-env", help="Name of an environment variable holding the token.")
@click.option("--waba-id", help="The WhatsApp Business Account id (optional).")
def accounts_add(
    phone_number_id: str,
    display_phone_number: str,
    app_secret: str | None,
    app_secret_file: Path | None,
    app_secret_env: str | None,
    verify_token: str | None,
    verify_token_file: Path | None,
    verify_token_env: str | None,
    access_token: str | None,
    access_token_file: Path | None,
    access_token_env: str | None,
    waba_id: str | None,
) -> None:
    """Register a phone number; prints the new account's id."""
    settings = _archive()
    secret = _secret(app_secret, app_secret_file, app_secret_env, "app secret")
    token = _secret(verify_token, verify_token_file, verify_token_env, "verify token")
    if not secret or not token:
        _fail("an app secret and a verify token are required")
    bearer = _secret(access_token, access_token_file, access_token_env, "access token")

    async def work(services: Services) -> str:
        async with services.sessions() as session, session.begin():
            account = await services.accounts.add(
                session,
                phone_number_id=phone_number_id,
                display_phone_number=display_phone_number,
                app_secret=secret,
                verify_token=token,
                access_token=bearer,
                waba_id=waba_id,
            )
        return account.id

    try:
        click.echo(_run(settings, work))
    except (AccountExists, ValueError) as exc:
        _fail(str(exc), 1)


@accounts.command("list")
def accounts_list() -> None:
    """List registered phone numbers (never their secrets)."""
    settings = _archive()

    async def work(services: Services) -> list[str]:
        async with services.sessions() as session:
            return [
                f"{a.id}  phone_number_id={a.phone_number_id}  "
                f"number={await services.accounts.display_phone_number(session, a)}"
                for a in await services.accounts.all(session)
            ]

    for line in _run(settings, work):
        click.echo(line)


@main.group("import")
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
    settings = _archive()

    async def work(services: Services) -> ImportResult:
        async with services.sessions() as session:
            await services.accounts.get(session, account_id)
        with file.open("rb") as source:
            return await services.importer.import_export(
                account_id=account_id,
                contact_phone=normalize_phone(contact),
                file=source,
                filename=file.name,
                timezone=timezone,
                business_sender=business_sender,
                partial=partial,
                date_order=date_order,
            )

    try:
        result = _run(settings, work)
    except DateOrderAmbiguous as exc:
        _echo_problems(file, exc.problems)
        _fail("nothing was imported (give --date-order dmy, mdy or ymd)", 1)
    except ChatExportError as exc:
        _echo_problems(file, exc.problems)
        _fail("nothing was imported (use --partial to import the readable lines)", 1)
    except (AccountNotFound, ValueError) as exc:
        _fail(str(exc), 1)
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
    settings = _archive()

    async def work(services: Services) -> list[MissingLines]:
        return await services.importer.missing_lines()

    gaps = _run(settings, work)
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


def _password(password_file: Path | None, password_env: str | None) -> str:
    given = _secret(None, password_file, password_env, "password")
    if given:
        return given
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


async def _user(services: Services, session: AsyncSession, username: str) -> User:
    user = await services.identity.user_by_name(session, username)
    if user is None:
        _fail(f"no user {username}", 1)
    return user


ROLE_CHOICE = click.Choice([r.value for r in Role])


@main.group()
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
    settings = _archive()
    password = _password(password_file, password_env)

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
        for line in _run(settings, work):
            click.echo(line)
    except (ValueError, IdentityError, AccountNotFound) as exc:
        _fail(str(exc), 1)


@users.command("grant")
@click.argument("username")
@click.argument("role", type=ROLE_CHOICE)
@click.option("--account", help="Limit the role to one business account id.")
def users_grant(username: str, role: str, account: str | None) -> None:
    """Grant a role (sensitive roles need an admin's approval once one exists)."""
    settings = _archive()

    async def work(services: Services) -> str:
        async with services.sessions() as session, session.begin():
            user = await _user(services, session, username)
            return await grant_as_operator(services, session, user, Role(role), account)

    try:
        click.echo(_run(settings, work))
    except (IdentityError, AccountNotFound) as exc:
        _fail(str(exc), 1)


@users.command("revoke")
@click.argument("username")
@click.argument("role", type=ROLE_CHOICE)
@click.option("--account", help="The business account id the role was limited to.")
def users_revoke(username: str, role: str, account: str | None) -> None:
    """Revoke a role."""
    settings = _archive()

    async def work(services: Services) -> int:
        async with services.sessions() as session, session.begin():
            user = await _user(services, session, username)
            return await services.identity.revoke_grant(session, user, Role(role), account)

    count = _run(settings, work)
    if not count:
        _fail(f"{username} does not hold {role} on {account or 'all accounts'}", 1)
    click.echo(f"revoked {role} from {username}")


@users.command("reset-mfa")
@click.argument("username")
def users_reset_mfa(username: str) -> None:
    """Forget a user's authenticator; they enrol again at their next sign-in."""
    settings = _archive()

    async def work(services: Services) -> None:
        async with services.sessions() as session, session.begin():
            await services.identity.reset_mfa(session, await _user(services, session, username))

    _run(settings, work)
    click.echo(f"authenticator of {username} reset")


@users.command("list")
def users_list() -> None:
    """List users and their roles."""
    settings = _archive()

    async def work(services: Services) -> list[str]:
        lines = []
        async with services.sessions() as session:
            for user in await services.identity.users(session):
                grants = await services.identity.active_grants(session, user.id)
                roles = ", ".join(f"{g.role}@{g.account_id or 'all'}" for g in grants) or "-"
                mfa = "mfa" if user.mfa_enrolled_at else "no-mfa"
                lines.append(f"{user.id}  {user.username}  {mfa}  {roles}")
        return lines

    for line in _run(settings, work):
        click.echo(line)


@main.group()
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
    settings = _archive()

    async def work(services: Services) -> str:
        async with services.sessions() as session, session.begin():
            user = await _user(services, session, username)
            new = await services.identity.create_token(
                session,
                user,
                name=name,
                scopes=frozenset(Permission(s) for s in scopes),
                lifetime=timedelta(days=days),
            )
        return new.secret

    try:
        click.echo(_run(settings, work))
    except (ValueError, IdentityError) as exc:
        _fail(str(exc), 1)


@tokens.command("list")
@click.argument("username")
def tokens_list(username: str) -> None:
    """List a user's tokens (never their secrets)."""
    settings = _archive()

    async def work(services: Services) -> list[str]:
        async with services.sessions() as session:
            user = await _user(services, session, username)
            return [
                f"{t.id}  sr_{t.prefix}_…  {t.name}  expires {t.expires_at:%Y-%m-%d}"
                f"{'  revoked' if t.revoked_at else ''}  {t.scopes}"
                for t in await services.identity.tokens(session, user.id)
            ]

    for line in _run(settings, work):
        click.echo(line)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token now."""
    settings = _archive()

    async def work(services: Services) -> None:
        async with services.sessions() as session, session.begin():
            await services.identity.revoke_token(session, token_id)

    try:
        _run(settings, work)
    except IdentityError as exc:
        _fail(str(exc), 1)
    click.echo(f"token {token_id} revoked")


@main.group()
def lexicon() -> None:
    """Manage the compliance lexicon (sensitive terms that flag, hold or block messages)."""


async def _audit_lexicon(services: Services, action: str, row: LexiconTerm) -> None:
    """Record the change itself, as the HTTP API does, beside the command's own event."""
    entry = AuditEntry(
        actor=CLI_ACTOR,
        action=action,
        outcome="ok",
        target=f"lexicon:{row.id} action:{row.action}",
        details={"term": row.term},
    )
    await services.audit.record_durable(entry)


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
    settings = _archive()

    async def work(services: Services) -> str:
        async with services.sessions() as session, session.begin():
            row = await services.lexicon.add(session, term, action, CLI_ACTOR)
        await _audit_lexicon(services, "lexicon.add", row)
        return f"added term {row.id}: {row.term} ({row.action})"

    try:
        click.echo(_run(settings, work))
    except LexiconError as exc:
        _fail(str(exc), 1)


def _lexicon_line(row: LexiconTerm) -> str:
    line = f"{row.id}  {row.action}  {row.term}  added {row.added_at:%Y-%m-%d} by {row.added_by}"
    if row.removed_at is not None:
        line += f"  removed {row.removed_at:%Y-%m-%d} by {row.removed_by}"
    return line


@lexicon.command("list")
@click.option("--all", "include_removed", is_flag=True, help="Include removed terms.")
def lexicon_list(include_removed: bool) -> None:
    """List the active terms (with --all, removed ones too)."""
    settings = _archive()

    async def work(services: Services) -> list[str]:
        async with services.sessions() as session:
            if include_removed:
                rows = await services.lexicon.history(session)
            else:
                rows = await services.lexicon.active(session)
        return [_lexicon_line(row) for row in rows]

    for line in _run(settings, work):
        click.echo(line)


@lexicon.command("remove")
@click.argument("term_id", type=int)
def lexicon_remove(term_id: int) -> None:
    """Remove a term; it stays in the history (list --all)."""
    settings = _archive()

    async def work(services: Services) -> None:
        async with services.sessions() as session, session.begin():
            row = await services.lexicon.remove(session, term_id, CLI_ACTOR)
        await _audit_lexicon(services, "lexicon.remove", row)

    try:
        _run(settings, work)
    except LexiconError as exc:
        _fail(str(exc), 1)
    click.echo(f"term {term_id} removed")


@main.command()
@click.option(
    "--url", default="http://127.0.0.1:8000", show_default=True, help="The running server."
)
@click.option(
    "--timeout",
    default=45.0,
    show_default=True,
    type=click.FloatRange(1, 600),
    help="Seconds to wait for projection and media fetch.",
)
def demo(url: str, timeout: float) -> None:
    """Fill a running embedded server (make serve, same directory) with a fictional
    business's conversations, and create a compliance officer to look at them."""
    from api.sandbox.demo import DemoError, run_demo

    settings = _settings()
    if settings.log_level != "debug":
        # The progress lines are the output; request and job logs would bury them.
        configure_logging("warning")
    if not settings.embedded:
        _fail(
            "the demo runs only in embedded mode: its fictional records could never be "
            "deleted from a production archive",
            1,
        )
    _require_archive(settings)

    async def work(services: Services) -> None:
        await run_demo(services, url, wait_seconds=timeout, out=click.echo)

    try:
        _run(settings, work)
    except DemoError as exc:
        _fail(str(exc), 1)


@main.group()
def audit() -> None:
    """Verify and export the audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain, the checkpoints and their sealed copies; exit 1 on tampering."""
    settings = _archive()

    async def work(services: Services) -> bool:
        async with services.sessions() as session, session.begin():
            report = await services.audit.verify(session)
        for problem in report.problems:
            click.echo(f"TAMPERED seq {problem.seq} {problem.kind}: {problem.detail}")
        if report.problems_omitted:
            click.echo(f"... and {report.problems_omitted} more problems")
        since = report.unanchored_since
        click.echo(
            f"checked {report.events} events up to seq {report.head_seq}, "
            f"{report.checkpoints} checkpoints and {report.anchors} in the vault; "
            f"unanchored: {report.unanchored} events after the last checkpoint"
            + (f", the oldest at {format_time(since)}" if since else "")
            + f"; {len(report.problems) + report.problems_omitted} problems"
        )
        return report.ok

    if not _run(settings, work):
        sys.exit(1)


@audit.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--actor", help="Only this actor's events.")
@click.option("--action", help="Only this action (a trailing * matches a prefix).")
def audit_export(out: Path, actor: str | None, action: str | None) -> None:
    """Write the trail as JSONL, its Ed25519 signature (OUT.sig) and public key (OUT.pem)."""
    settings = _archive()

    async def work(services: Services) -> tuple[bytes, bytes, str]:
        async with services.sessions() as session, session.begin():
            jsonl, signature = await services.audit.export(session, actor=actor, action=action)
            return jsonl, signature, await services.audit.public_key_pem(session)

    jsonl, signature, pem = _run(settings, work)
    out.write_bytes(jsonl)
    out.with_name(out.name + ".sig").write_bytes(base64.b64encode(signature) + b"\n")
    out.with_name(out.name + ".pem").write_text(pem)
    events = len(jsonl.splitlines())
    click.echo(f"wrote {out} ({events} events), {out.name}.sig and {out.name}.pem")


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the Ed25519 public key that signs checkpoints and exports (PEM)."""
    settings = _archive()

    async def work(services: Services) -> str:
        async with services.sessions() as session, session.begin():
            return await services.audit.public_key_pem(session)

    click.echo(_run(settings, work), nl=False)


if __name__ == "__main__":  # the embedded server starts its worker with ``python -m api.cli.main``
    main()
