"""The root key and subject keys: ``strongroom keys init|status|rotate``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from api.bootstrap import (
    Services,
    load_root_keys,
    pending_key_file,
    write_key_file,
)
from api.cli.common import (
    archive_settings,
    command_settings,
    fail,
    run_command,
)
from api.cli.operator import CLI
from archiver.crypto.keyring import new_root_key, root_key_id


@click.group()
def keys() -> None:
    """Manage the root key and subject keys."""


@keys.command("init")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the key here.")
def keys_init(out: Path | None) -> None:
    """Create a new root key file (mode 0600); never overwrites one."""
    settings = command_settings()
    if settings.master_key is not None and out is None:
        fail("the root key is already given by STRONGROOM_MASTER_KEY; use --out for a new file")
    path = out or settings.master_key_file
    if path.exists():
        fail(f"{path} already exists; keys init never overwrites a root key", 1)
    key = new_root_key()
    write_key_file(path, key)
    click.echo(f"root key {root_key_id(key)} written to {path}")


@keys.command("status")
def keys_status() -> None:
    """Show the root key id and how many subject keys each root key wraps."""
    settings = archive_settings()

    async def work(services: Services) -> list[str]:
        keyring = services.keyring
        counts = await services.key_rotation.status()
        source = "STRONGROOM_MASTER_KEY" if settings.master_key else str(settings.master_key_file)
        click.echo(f"root key: {keyring.root_key_id} (from {source})")
        destroyed = counts.pop("destroyed")
        for kid, n in sorted(counts.items()):
            click.echo(f"subject keys wrapped by {kid}: {n}")
        click.echo(f"destroyed subject keys: {destroyed}")
        if len(keyring.loaded_root_key_ids) > 1:
            click.echo("a rotation was interrupted: run `strongroom keys rotate` to finish it")
        return [k for k in counts if k not in keyring.loaded_root_key_ids]

    unknown = run_command(settings, work)
    if unknown:
        fail(f"subject keys are wrapped by root keys that are not loaded: {', '.join(unknown)}", 1)


@keys.command("rotate")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the new key when the current one comes from STRONGROOM_MASTER_KEY.",
)
def keys_rotate(out: Path | None) -> None:
    """Re-wrap every subject key under a new root key; no object is rewritten."""
    settings = archive_settings()
    if settings.master_key is not None:
        if out is None:
            fail("the root key comes from STRONGROOM_MASTER_KEY; give --out FILE for the new key")
        if out.exists():
            fail(f"{out} already exists", 1)
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
        rotated = await services.key_rotation.rotate(CLI, new_key)
        return rotated.rewrapped

    count = run_command(settings, work)
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
