"""The probe's attack on the audit trail, against a real server and its worker: the
worker anchors the chain in the vault, a DBA drops the no-delete trigger, deletes
the newest events (and the checkpoint rows), recreates the trigger; `strongroom
audit verify` fails, and the server numbers nothing from the cut."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import running_server
from tests.e2e.server import Server, fixture_bytes

REMOVED = 5


@pytest.fixture(scope="module")
def server(database_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose worker anchors every second, so the test waits little."""
    with running_server(
        tmp_path_factory.mktemp("anchor"), database_name, {"STRONGROOM_AUDIT_ANCHOR_SECONDS": "1"}
    ) as srv:
        yield srv


def _heads(server: Server) -> tuple[int, int]:
    """The newest event's seq and the newest checkpoint's."""
    ((events, checkpoints),) = server.sql(
        "SELECT (SELECT coalesce(max(seq), 0) FROM audit_events),"
        " (SELECT coalesce(max(seq), 0) FROM audit_checkpoints)",
    )
    assert isinstance(events, int)
    assert isinstance(checkpoints, int)
    return events, checkpoints


def _remove_after(server: Server, cut: int) -> None:
    """Drop the no-delete trigger, delete the events after ``cut`` and every
    checkpoint row, recreate the trigger."""
    delete = (
        f"DELETE FROM audit_events WHERE seq > {cut:d}",  # noqa: S608  # an int, formatted as one
        "DELETE FROM audit_checkpoints",
    )
    if server.on_sqlite:
        ((trigger,),) = server.sql(
            "SELECT sql FROM sqlite_master WHERE name = 'audit_events_no_delete'"
        )
        server.sql("DROP TRIGGER audit_events_no_delete", *delete, str(trigger))
    else:
        server.sql(
            "ALTER TABLE audit_events DISABLE TRIGGER USER",
            *delete,
            "ALTER TABLE audit_events ENABLE TRIGGER USER",
        )


def test_removing_the_newest_events_is_caught_and_never_continued(
    server: Server, tmp_path: Path
) -> None:
    assert server.post_webhook(fixture_bytes("message_text")).status_code == 200
    for _ in range(REMOVED * 2):  # each read is an event
        assert server.get(f"/api/v1/accounts/{server.account_id}/records").status_code == 200
    # The worker anchors the head once it stops moving (bounded wait, no fixed sleep).
    anchored = server.wait_for(
        lambda: (h := _heads(server))[1] > REMOVED and h[0] == h[1] and h[1], timeout=20
    )
    clean = server.cli("audit", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    cut = anchored - REMOVED
    _remove_after(server, cut)
    tampered = server.cli("audit", "verify")
    assert tampered.returncode == 1
    assert f"TAMPERED seq {cut + 1} truncated" in tampered.stdout
    assert f"events {cut + 1}.." in tampered.stdout
    assert "could not be recorded in the audit trail" in tampered.stderr

    # The server numbers nothing from the cut (restarted, it knows the vault's
    # anchor: tests/integration/test_audit.py).
    read = server.get(f"/api/v1/accounts/{server.account_id}/records")
    assert read.status_code == 500  # an audited read is refused unrecorded
    # (A checkpoint the worker was writing as the rows went may reappear; it
    # signs a head that the vault's anchors hold anyway.)
    assert _heads(server)[0] == cut
    assert "audit chain cut; appends refused" in server.log_path.read_text()
