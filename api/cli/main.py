"""The ``strongroom`` command line: the group, the commands that run the system
(serve, worker, migrate, demo), and each command group from its own module."""

from __future__ import annotations

import os

import click

from api.bootstrap import Services
from api.cli import (
    accounts,
    audit,
    consent,
    imports,
    keys,
    lexicon,
    outbox,
    templates,
    tokens,
    users,
    vault,
)
from api.cli.common import (
    archive_settings,
    command_settings,
    fail,
    log,
    migrate_schema,
    prepare,
    require_archive,
    run_command,
)
from api.observability.logging import configure_logging


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

    settings = command_settings()
    prepare(settings)
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

    run_command(archive_settings(), lambda services: run_worker(services, embedded=embedded))


@main.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    before, after = migrate_schema(command_settings())
    if before == after:
        click.echo(f"database schema is up to date (revision {after})")
    else:
        click.echo(f"database schema migrated from revision {before or 'none'} to {after}")


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

    settings = command_settings()
    if settings.log_level != "debug":
        # The progress lines are the output; request and job logs would bury them.
        configure_logging("warning")
    if not settings.embedded:
        fail(
            "the demo runs only in embedded mode: its fictional records could never be "
            "deleted from a production archive",
            1,
        )
    require_archive(settings)

    async def work(services: Services) -> None:
        await run_demo(services, url, wait_seconds=timeout, out=click.echo)

    try:
        run_command(settings, work)
    except DemoError as exc:
        fail(str(exc), 1)


main.add_command(keys.keys)
main.add_command(vault.vault)
main.add_command(accounts.accounts)
main.add_command(imports.import_)
main.add_command(users.users)
main.add_command(tokens.tokens)
main.add_command(lexicon.lexicon)
main.add_command(outbox.outbox)
main.add_command(templates.templates)
main.add_command(consent.consent)
main.add_command(audit.audit)


if __name__ == "__main__":  # the embedded server starts its worker with ``python -m api.cli.main``
    main()
