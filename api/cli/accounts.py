"""Business numbers: ``strongroom accounts add|list``."""

from __future__ import annotations

from pathlib import Path

import click

from api.bootstrap import Services
from api.cli.common import archive_settings, fail, run_command, secret_from
from api.cli.operator import CLI
from archiver.core.errors import AccountExists


@click.group()
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
    settings = archive_settings()
    secret = secret_from(app_secret, app_secret_file, app_secret_env, "app secret")
    token = secret_from(verify_token, verify_token_file, verify_token_env, "verify token")
    if not secret or not token:
        fail("an app secret and a verify token are required")
    bearer = secret_from(access_token, access_token_file, access_token_env, "access token")

    async def work(services: Services) -> str:
        account = await services.accounts.register(
            CLI,
            phone_number_id=phone_number_id,
            display_phone_number=display_phone_number,
            app_secret=secret,
            verify_token=token,
            access_token=bearer,
            waba_id=waba_id,
        )
        return account.id

    try:
        click.echo(run_command(settings, work))
    except (AccountExists, ValueError) as exc:
        fail(str(exc), 1)


@accounts.command("list")
def accounts_list() -> None:
    """List registered phone numbers (never their secrets)."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        return [
            f"{a.id}  phone_number_id={a.phone_number_id}  number={a.display_phone_number}"
            for a in await services.accounts.listed(None)
        ]

    for line in run_command(settings, work):
        click.echo(line)
