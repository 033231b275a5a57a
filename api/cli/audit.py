"""The audit trail: ``strongroom audit verify|export|public-key``."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import click

from api.bootstrap import Services
from api.cli.common import (
    archive_settings,
    run_command,
)
from archiver.audit.services import format_time


@click.group()
def audit() -> None:
    """Verify and export the audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain, the checkpoints and their sealed copies; exit 1 on tampering."""
    settings = archive_settings()

    async def work(services: Services) -> bool:
        report = await services.audit.verify()
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

    if not run_command(settings, work):
        sys.exit(1)


@audit.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--actor", help="Only this actor's events.")
@click.option("--action", help="Only this action (a trailing * matches a prefix).")
def audit_export(out: Path, actor: str | None, action: str | None) -> None:
    """Write the trail as JSONL, its Ed25519 signature (OUT.sig) and public key (OUT.pem)."""
    settings = archive_settings()

    async def work(services: Services) -> tuple[bytes, bytes, str]:
        jsonl, signature = await services.audit.export(actor=actor, action=action)
        return jsonl, signature, await services.audit.public_key_pem()

    jsonl, signature, pem = run_command(settings, work)
    out.write_bytes(jsonl)
    out.with_name(out.name + ".sig").write_bytes(base64.b64encode(signature) + b"\n")
    out.with_name(out.name + ".pem").write_text(pem)
    events = len(jsonl.splitlines())
    click.echo(f"wrote {out} ({events} events), {out.name}.sig and {out.name}.pem")


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the Ed25519 public key that signs checkpoints and exports (PEM)."""
    settings = archive_settings()

    async def work(services: Services) -> str:
        return await services.audit.public_key_pem()

    click.echo(run_command(settings, work), nl=False)
