"""The vault: ``strongroom vault verify``."""

from __future__ import annotations

import sys

import click

from api.bootstrap import Services
from api.cli.common import (
    archive_settings,
    run_command,
)


@click.group()
def vault() -> None:
    """Inspect the vault."""


@vault.command("verify")
def vault_verify() -> None:
    """Re-read and re-hash every sealed object, and check every record's binding to
    its object; exit 1 on any drift or binding failure."""
    settings = archive_settings()

    async def work(services: Services) -> bool:
        check = await services.records.verify()
        report, bindings = check.objects, check.bindings
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
        return check.clean

    if not run_command(settings, work):
        sys.exit(1)
