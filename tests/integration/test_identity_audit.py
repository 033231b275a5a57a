"""Each identity change commits with its audit event, or neither commits; a refused
change leaves a denied event and no change (real SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit.models import AuditEvent
from archiver.audit.services import Actor, AuditEntry, AuditLog
from archiver.core.clock import FixedClock
from archiver.core.db import Writer
from archiver.core.errors import InvalidInput
from archiver.crypto.keyring import Keyring
from archiver.identity.models import ApiToken, Approval, Grant, User, WebSession
from archiver.identity.services import (
    MAX_FAILED_LOGINS,
    AccountLocked,
    ApprovalService,
    GrantService,
    IdentityConflict,
    IdentityService,
    InvalidCredentials,
    NotPermitted,
    Permission,
    Principal,
    Role,
)
from archiver.vault.services import Vault

Sessions = async_sessionmaker[AsyncSession]
PASSWORD = "correct horse battery staple"
ADMIN = Actor(id="usr_admin", name="root-admin", role="admin", request_id="req-1")
CLI = Actor(id="cli", name="operator")


@pytest.fixture
async def audit(
    sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock, database_url: str
) -> AsyncIterator[AuditLog]:
    log = AuditLog(sessions, vault, keyring, clock, writer=Writer(sessions, database_url))
    yield log
    await log.close()


@pytest.fixture
def identity(
    keyring: Keyring, clock: FixedClock, sessions: Sessions, audit: AuditLog, database_url: str
) -> IdentityService:
    writer = Writer(sessions, database_url)
    return IdentityService(keyring, clock, writer=writer, audit=audit, sessions=sessions)


@pytest.fixture
def grants(
    identity: IdentityService,
    clock: FixedClock,
    sessions: Sessions,
    audit: AuditLog,
    database_url: str,
) -> GrantService:
    approvals = ApprovalService(clock, sessions=sessions)
    writer = Writer(sessions, database_url)
    return GrantService(identity, approvals, writer=writer, audit=audit, sessions=sessions)


async def _events(sessions: Sessions, after: int = 0) -> list[AuditEvent]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq)
            )
        )


async def _head(sessions: Sessions) -> int:
    events = await _events(sessions)
    return events[-1].seq if events else 0


async def _one(sessions: Sessions, after: int) -> AuditEvent:
    events = await _events(sessions, after)
    assert len(events) == 1, [(e.action, e.outcome) for e in events]
    return events[0]


async def _count(sessions: Sessions, table: Any) -> int:
    async with sessions() as session:
        return len(list(await session.scalars(select(table))))


def _admin(user_id: str) -> Principal:
    return Principal(user_id, "root-admin", frozenset({(Role.ADMIN, None)}), via="session")


async def test_each_change_commits_with_exactly_its_event(
    identity: IdentityService, grants: GrantService, sessions: Sessions
) -> None:
    head = await _head(sessions)
    alice = await identity.add_user(ADMIN, "alice", PASSWORD)
    event = await _one(sessions, head)
    assert (event.action, event.outcome, event.target) == (
        "identity.user.create",
        "ok",
        f"user:{alice.id}",
    )
    assert (event.actor, event.role, event.request_id) == ("usr_admin", "admin", "req-1")

    async def check(action: str, target: str, outcome: str = "ok") -> None:
        nonlocal head
        event = await _one(sessions, head)
        assert (event.action, event.outcome) == (action, outcome)
        assert str(event.target).startswith(target), event.target
        head = event.seq

    head = event.seq
    await identity.change_password(ADMIN, alice.id, PASSWORD + "!")
    await check("identity.user.password", f"user:{alice.id}")
    await identity.forget_mfa(ADMIN, "alice")
    await check("identity.mfa.reset", f"user:{alice.id}")

    agent = await grants.request(ADMIN, _admin("usr_admin"), alice.id, Role.REGULATOR, None)
    assert isinstance(agent, Grant)
    await check("identity.grant.apply", f"grant:{agent.id} user:{alice.id} role:regulator")
    asked = await grants.request(ADMIN, _admin("usr_admin"), alice.id, Role.SUPERVISOR, None)
    assert isinstance(asked, Approval)
    await check("identity.grant.request", f"approval:{asked.id} user:{alice.id}")
    checker = Actor(id="usr_checker", name="checker")
    await grants.decide(checker, _admin("usr_checker"), asked.id, approve=True)
    await check("identity.grant.approve", f"approval:{asked.id} kind:grant maker:usr_admin")
    again = await grants.request(ADMIN, _admin("usr_admin"), alice.id, Role.AUDITOR, None)
    assert isinstance(again, Approval)
    head = await _head(sessions)
    await grants.decide(checker, _admin("usr_checker"), again.id, approve=False)
    await check("identity.grant.reject", f"approval:{again.id}")
    assert await grants.revoke(ADMIN, alice.id, Role.REGULATOR, None) == 1
    await check("identity.grant.revoke", f"user:{alice.id} role:regulator")

    new = await identity.issue_token(
        ADMIN,
        alice.id,
        name="t",
        scopes=frozenset({Permission.ARCHIVE_READ}),
        lifetime=timedelta(days=1),
    )
    await check("identity.token.create", f"token:{new.id}")
    await identity.authenticate_token(new.secret)  # its last use: written, not an event
    assert await _events(sessions, head) == []
    await identity.withdraw_token(ADMIN, new.id, owner=alice.id)
    await check("identity.token.revoke", f"token:{new.id}")


async def test_signing_in_with_totp_records_each_step_as_the_user(
    identity: IdentityService,
    grants: GrantService,
    sessions: Sessions,
    clock: FixedClock,
) -> None:
    bob = await identity.add_user(ADMIN, "bob", PASSWORD)
    await grants.grant_as_operator(CLI, "bob", Role.SUPERVISOR, None)
    anonymous = Actor(id="anonymous", client_ip="10.0.0.9")
    head = await _head(sessions)
    cookie = await identity.sign_in(anonymous, "bob", PASSWORD)
    event = await _one(sessions, head)
    assert (event.action, event.actor, event.target) == (
        "identity.session.start",
        bob.id,
        f"user:{bob.id}",
    )
    assert event.client_ip == "10.0.0.9"
    async with sessions() as session:
        found = await identity.find_session(session, cookie)
    assert found is not None
    pending = found[0]
    head = event.seq
    enrolment = await identity.second_factor(anonymous, pending)
    assert enrolment is not None
    assert not isinstance(enrolment, str)
    event = await _one(sessions, head)
    assert (event.action, event.actor) == ("identity.totp.begin", bob.id)
    head = event.seq
    code = pyotp.TOTP(enrolment.secret).at(clock.now())
    wrong = "000000" if code != "000000" else "111111"
    with pytest.raises(InvalidCredentials):
        await identity.finish_sign_in(anonymous, pending, wrong)
    event = await _one(sessions, head)
    assert (event.action, event.actor, event.outcome, event.reason) == (
        "identity.session.complete",
        bob.id,
        "denied",
        "MFA failed",
    )
    head = event.seq
    signed_in = await identity.finish_sign_in(anonymous, pending, code)
    actions = [(e.action, e.actor, e.outcome) for e in await _events(sessions, head)]
    assert actions == [
        ("identity.totp.confirm", bob.id, "ok"),
        ("identity.session.complete", bob.id, "ok"),
    ]
    head = await _head(sessions)
    await identity.sign_out(Actor(id=bob.id, name="bob"), signed_in)
    event = await _one(sessions, head)
    assert (event.action, event.target) == ("identity.session.end", f"user:{bob.id}")


async def test_a_change_whose_transaction_fails_leaves_neither_change_nor_event(
    identity: IdentityService,
    grants: GrantService,
    audit: AuditLog,
    sessions: Sessions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = await identity.add_user(ADMIN, "alice", PASSWORD)
    await grants.grant_as_operator(CLI, "alice", Role.SUPERVISOR, None)  # may hold archive.read
    head = await _head(sessions)
    grants_before = await _count(sessions, Grant)

    async def failing(session: AsyncSession, entry: AuditEntry) -> None:
        await session.flush()  # the change is in the transaction by now
        raise RuntimeError("the disk is gone")

    # A domain refusal would be recorded through the same failing record_in and
    # raise RuntimeError too: each call below must get as far as its change.
    monkeypatch.setattr(audit, "record_in", failing)
    with pytest.raises(RuntimeError):
        await identity.add_user(ADMIN, "carol", PASSWORD)
    with pytest.raises(RuntimeError):
        await grants.request(ADMIN, _admin("usr_admin"), alice.id, Role.REGULATOR, None)
    with pytest.raises(RuntimeError):
        await grants.grant_as_operator(CLI, alice.id, Role.ADMIN, None)
    with pytest.raises(RuntimeError):
        await identity.issue_token(
            ADMIN,
            alice.id,
            name="t",
            scopes=frozenset({Permission.ARCHIVE_READ}),
            lifetime=timedelta(days=1),
        )
    with pytest.raises(RuntimeError):
        await identity.sign_in(Actor(id="anonymous"), "alice", PASSWORD)
    monkeypatch.undo()
    assert await _events(sessions, head) == []
    assert await _count(sessions, User) == 1
    assert await _count(sessions, Grant) == grants_before
    assert await _count(sessions, ApiToken) == 0
    assert await _count(sessions, WebSession) == 0


async def test_a_refused_change_leaves_a_denied_event_with_its_reason_and_no_change(
    identity: IdentityService, grants: GrantService, sessions: Sessions
) -> None:
    alice = await identity.add_user(ADMIN, "alice", PASSWORD)
    head = await _head(sessions)
    with pytest.raises(IdentityConflict):
        await identity.add_user(ADMIN, "alice", PASSWORD)
    event = await _one(sessions, head)
    assert (event.action, event.outcome, event.actor) == (
        "identity.user.create",
        "denied",
        "usr_admin",
    )
    assert event.reason == "user alice already exists"
    assert await _count(sessions, User) == 1
    with pytest.raises(InvalidInput, match="form of a user id"):
        await identity.add_user(ADMIN, alice.id, PASSWORD)  # names and ids cannot be confused
    assert await _count(sessions, User) == 1

    # The maker cannot check their own request: refused, still pending.
    asked = await grants.request(ADMIN, _admin("usr_admin"), alice.id, Role.AUDITOR, None)
    assert isinstance(asked, Approval)
    head = await _head(sessions)
    with pytest.raises(NotPermitted):
        await grants.decide(ADMIN, _admin("usr_admin"), asked.id, approve=True)
    event = await _one(sessions, head)
    assert (event.action, event.outcome, event.target) == (
        "identity.grant.approve",
        "denied",
        f"approval:{asked.id}",
    )
    assert event.reason == "a request must be decided by someone other than its maker"
    assert await grants.decide(
        Actor(id="usr_checker"), _admin("usr_checker"), asked.id, approve=False
    )
    head = await _head(sessions)
    # Deciding again: the wrong state, refused.
    with pytest.raises(IdentityConflict, match="already rejected"):
        await grants.decide(Actor(id="usr_checker"), _admin("usr_checker"), asked.id, approve=True)
    event = await _one(sessions, head)
    assert (event.outcome, event.reason) == ("denied", f"approval {asked.id} is already rejected")
    async with sessions() as session:
        assert await identity.active_grants(session, alice.id) == []

    # Someone without users.manage cannot grant.
    head = await _head(sessions)
    nobody = Principal("usr_x", "x", frozenset(), via="session")
    with pytest.raises(NotPermitted):
        await grants.request(Actor(id="usr_x", name="x"), nobody, alice.id, Role.REGULATOR, None)
    event = await _one(sessions, head)
    assert (event.action, event.outcome, event.actor) == (
        "identity.grant.request",
        "denied",
        "usr_x",
    )
    assert event.reason == "granting roles needs users.manage"
    assert await _count(sessions, Grant) == 0


async def test_a_failed_sign_in_keeps_the_username_tried_sealed_and_lockouts_are_recorded(
    identity: IdentityService, audit: AuditLog, sessions: Sessions
) -> None:
    await identity.add_user(ADMIN, "alice", PASSWORD)
    head = await _head(sessions)
    typed = "hunter2-typed-as-a-username"
    with pytest.raises(InvalidCredentials):
        await identity.sign_in(Actor(id="anonymous"), typed, PASSWORD)
    event = await _one(sessions, head)
    assert (event.action, event.outcome, event.reason) == (
        "identity.session.start",
        "denied",
        "bad credentials",
    )
    clear = [
        getattr(event, c.key) for c in AuditEvent.__table__.columns if c.key != "details_sealed"
    ]
    assert all(typed not in str(value) for value in clear)
    assert await audit.open_details(event) == {"username": typed}

    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises((InvalidCredentials, AccountLocked)):
            await identity.sign_in(Actor(id="anonymous"), "alice", "wrong password!!")
    with pytest.raises(AccountLocked):
        await identity.sign_in(Actor(id="anonymous"), "alice", PASSWORD)
    reasons = [str(e.reason) for e in await _events(sessions, event.seq)]
    assert reasons[:-2] == ["bad credentials"] * (MAX_FAILED_LOGINS - 1)
    assert reasons[-2].startswith("bad credentials; locked until ")  # the one that locked
    assert reasons[-1] == "locked"


async def test_grant_as_operator_grants_the_first_admin_then_asks_for_approval(
    identity: IdentityService, grants: GrantService, sessions: Sessions
) -> None:
    first = await identity.add_user(ADMIN, "first", PASSWORD)
    second = await identity.add_user(ADMIN, "second", PASSWORD)
    head = await _head(sessions)
    made = await grants.grant_as_operator(CLI, "first", Role.ADMIN, None)
    assert isinstance(made, Grant)
    assert made.granted_by == "cli"
    event = await _one(sessions, head)
    assert (event.action, event.actor, event.target, event.scope) == (
        "identity.grant.apply",
        "cli",
        f"grant:{made.id} user:{first.id} role:admin",
        "all accounts",
    )
    # Once an admin exists, a sensitive role waits for one; a regulator is granted at once.
    asked = await grants.grant_as_operator(CLI, second.id, Role.ADMIN, None)
    assert isinstance(asked, Approval)
    assert asked.requested_by == "cli"
    assert isinstance(await grants.grant_as_operator(CLI, second.id, Role.REGULATOR, None), Grant)
    async with sessions() as session:
        assert [g.role for g in await identity.active_grants(session, second.id)] == ["regulator"]
    head = await _head(sessions)
    with pytest.raises(IdentityConflict, match="already exists"):
        await grants.grant_as_operator(CLI, "second", Role.REGULATOR, None)
    event = await _one(sessions, head)
    assert (event.action, event.outcome, event.actor) == ("identity.grant.request", "denied", "cli")
