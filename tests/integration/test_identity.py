"""Identity against real databases: argon2id, lockout, TOTP, tokens, grants, maker-checker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import FixedClock
from archiver.core.db import Writer
from archiver.crypto.keyring import Keyring
from archiver.identity.models import ApiToken, Approval, Grant, User, WebSession
from archiver.identity.services import (
    FIRST_LOCKOUT,
    MAX_FAILED_LOGINS,
    ROLE_PERMISSIONS,
    SENSITIVE_ROLES,
    AccountLocked,
    ApprovalService,
    GrantService,
    IdentityError,
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


@pytest.fixture
def writer(sessions: Sessions, database_url: str) -> Writer:
    return Writer(sessions, database_url)


@pytest.fixture
async def audit(
    sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock, writer: Writer
) -> AsyncIterator[AuditLog]:
    log = AuditLog(sessions, vault, keyring, clock, writer=writer)
    yield log
    await log.close()


@pytest.fixture
def identity(
    keyring: Keyring, clock: FixedClock, writer: Writer, audit: AuditLog, sessions: Sessions
) -> IdentityService:
    return IdentityService(keyring, clock, writer=writer, audit=audit, sessions=sessions)


@pytest.fixture
def grants(
    identity: IdentityService,
    clock: FixedClock,
    sessions: Sessions,
    writer: Writer,
    audit: AuditLog,
) -> GrantService:
    return GrantService(
        identity,
        ApprovalService(clock, sessions=sessions),
        writer=writer,
        audit=audit,
        sessions=sessions,
    )


ADMIN_ACTOR = Actor(id="test", name="test")


async def _user(identity: IdentityService, sessions: Sessions, name: str = "alice") -> User:
    async with sessions() as session, session.begin():
        return await identity.create_user(session, name, PASSWORD, created_by=None)


async def test_passwords_are_argon2id_and_checked(
    identity: IdentityService, sessions: Sessions
) -> None:
    user = await _user(identity, sessions)
    assert user.password_hash is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    async with sessions() as session, session.begin():
        assert (await identity.check_password(session, "ALICE", PASSWORD)).id == user.id
        with pytest.raises(InvalidCredentials):
            await identity.check_password(session, "alice", "wrong password!")
        with pytest.raises(InvalidCredentials):
            await identity.check_password(session, "nobody", PASSWORD)
    with pytest.raises(ValueError, match="at least"):
        async with sessions() as session, session.begin():
            await identity.create_user(session, "bob", "short", created_by=None)


async def test_lockout_backs_off_and_expires(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    await _user(identity, sessions)
    for _ in range(MAX_FAILED_LOGINS):
        async with sessions() as session, session.begin():
            with pytest.raises(InvalidCredentials):
                await identity.check_password(session, "alice", "wrong password!")
    async with sessions() as session, session.begin():
        # Locked: even the right password is refused until the lock expires.
        with pytest.raises(AccountLocked) as locked:
            await identity.check_password(session, "alice", PASSWORD)
    assert locked.value.until == clock.now() + FIRST_LOCKOUT

    clock.advance(FIRST_LOCKOUT + timedelta(seconds=1))
    async with sessions() as session, session.begin():
        with pytest.raises(InvalidCredentials):
            await identity.check_password(session, "alice", "wrong again!!")
    async with sessions() as session, session.begin():
        with pytest.raises(AccountLocked) as again:
            await identity.check_password(session, "alice", PASSWORD)
    assert again.value.until == clock.now() + 2 * FIRST_LOCKOUT  # doubled

    clock.advance(3 * FIRST_LOCKOUT)
    async with sessions() as session, session.begin():
        user = await identity.check_password(session, "alice", PASSWORD)
        # The right password alone clears nothing: a second factor may follow.
        assert user.failed_logins == MAX_FAILED_LOGINS + 1
        _, pending = await identity.start_session(session, user, mfa_verified=False)
        await identity.complete_sign_in(session, pending, None)  # alice needs no TOTP
    async with sessions() as session:
        user = (await session.scalars(select(User))).one()
        assert (user.failed_logins, user.locked_until) == (0, None)


async def test_totp_enrolment_and_replay(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        enrolment = await identity.totp_enrolment(session, user)
        assert enrolment.uri.startswith("otpauth://totp/Strongroom:alice")
        # Asking again before confirming shows the same secret.
        assert (await identity.totp_enrolment(session, user)).secret == enrolment.secret
    totp = pyotp.TOTP(enrolment.secret)
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        with pytest.raises(InvalidCredentials):
            await identity.verify_totp(
                session, user, "000000" if totp.at(clock.now()) != "000000" else "111111"
            )
        await identity.verify_totp(session, user, totp.at(clock.now()))
        assert user.mfa_enrolled_at == clock.now()
        assert user.totp_secret_sealed is not None
        assert enrolment.secret.encode() not in user.totp_secret_sealed
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        with pytest.raises(InvalidCredentials):  # the same code cannot be used twice
            await identity.verify_totp(session, user, totp.at(clock.now()))
    clock.advance(timedelta(seconds=30))
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        await identity.verify_totp(session, user, totp.at(clock.now()))
        await identity.reset_mfa(session, user)
        assert user.mfa_enrolled_at is None


async def test_totp_takes_one_step_of_drift_and_never_a_step_at_or_before_the_last(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        totp = pyotp.TOTP((await identity.begin_totp(session, user)).secret)
    step = timedelta(seconds=totp.interval)

    async def verify(at: timedelta) -> bool:
        """Whether the code of the step ``at`` from now is taken."""
        nonlocal user
        async with sessions() as session, session.begin():
            user = await session.merge(user)
            try:
                await identity.verify_totp(session, user, totp.at(clock.now() + at))
            except InvalidCredentials:
                return False
            return True

    assert not await verify(2 * step)  # beyond the drift allowed
    assert await verify(-step)  # the previous step, once
    assert not await verify(-step)
    assert await verify(step)  # the next step, before its time
    # The current step is now before the last one taken: refused, though unused.
    assert not await verify(timedelta(0))
    clock.advance(step)
    assert not await verify(timedelta(0))  # the step taken early, now current
    assert await verify(step)
    clock.advance(3 * step)
    assert await verify(timedelta(0))


async def test_tokens_expire_revoke_and_are_scoped(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        await identity.apply_grant(session, user, Role.COMPLIANCE_OFFICER, None, granted_by=None)
        new = await identity.create_token(
            session,
            user,
            name="ci",
            scopes=frozenset({Permission.ARCHIVE_READ}),
            lifetime=timedelta(hours=1),
        )
        stored = (await session.scalars(select(ApiToken))).one()
    # A token holds only permissions its user holds; the refusal names the missing one.
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        with pytest.raises(NotPermitted, match=r"alice lacks audit\.read, users\.manage"):
            await identity.create_token(
                session,
                user,
                name="too much",
                scopes=frozenset(
                    {Permission.ARCHIVE_READ, Permission.USERS_MANAGE, Permission.AUDIT_READ}
                ),
                lifetime=timedelta(hours=1),
            )
    assert new.secret.startswith(f"sr_{new.prefix}_")
    assert new.secret.split("_", 2)[2] not in stored.secret_hash
    assert stored.secret_hash.startswith("$argon2id$")

    principal = await identity.authenticate_token(new.secret)
    assert principal.allows(Permission.ARCHIVE_READ, "acc_any")
    assert not principal.allows(Permission.ACCOUNTS_READ)  # the role has it, the token does not

    # Last use is kept to the minute: requests within it write nothing.
    first_use = clock.now()
    for step, last_use in ((timedelta(seconds=59), first_use), (timedelta(seconds=2), None)):
        clock.advance(step)
        await identity.authenticate_token(new.secret)
        async with sessions() as session:
            used = (await session.scalars(select(ApiToken))).one().last_used_at
        assert used == (last_use or clock.now())

    for forged in (
        new.secret[:-1] + ("A" if new.secret[-1] != "A" else "B"),
        "sr_zzzzzzzzzzzz_" + "x" * 43,
        "junk",
    ):
        with pytest.raises(InvalidCredentials):
            await identity.authenticate_token(forged)

    clock.advance(timedelta(hours=1))
    with pytest.raises(InvalidCredentials):
        await identity.authenticate_token(new.secret)

    async with sessions() as session, session.begin():
        user = await session.merge(user)
        other = await identity.create_token(
            session,
            user,
            name="x",
            scopes=frozenset({Permission.ARCHIVE_READ}),
            lifetime=timedelta(days=1),
        )
    await identity.authenticate_token(other.secret)
    async with sessions() as session, session.begin():
        await identity.revoke_token(session, other.id)
    with pytest.raises(InvalidCredentials):
        await identity.authenticate_token(other.secret)


def _principal(user_id: str, *grants: tuple[Role, str | None]) -> Principal:
    return Principal(user_id, user_id, frozenset(grants), via="session")


def test_grants_are_scoped_and_default_deny() -> None:
    officer = _principal("u1", (Role.COMPLIANCE_OFFICER, "acc_a"))
    assert officer.allows(Permission.ARCHIVE_READ, "acc_a")
    assert not officer.allows(Permission.ARCHIVE_READ, "acc_b")
    assert officer.accounts_for(Permission.ARCHIVE_READ) == {"acc_a"}
    assert not officer.allows(Permission.USERS_MANAGE)
    admin = _principal("u2", (Role.ADMIN, None))
    assert admin.allows(Permission.USERS_MANAGE)
    assert not admin.allows(Permission.ARCHIVE_READ, "acc_a")  # admins read no content
    scoped_admin = _principal("u3", (Role.ADMIN, "acc_a"))
    assert not scoped_admin.allows(Permission.USERS_MANAGE)  # global permissions need all accounts
    regulator = _principal("u4", (Role.REGULATOR, None))
    assert not any(regulator.allows(p) for p in Permission)
    assert not _principal("u5").allows(Permission.ACCOUNTS_READ)


async def test_maker_checker_refuses_self_approval(
    identity: IdentityService, grants: GrantService, sessions: Sessions
) -> None:
    maker, checker, target, outsider = [
        await _user(identity, sessions, n) for n in ("maker", "checker", "target", "outsider")
    ]
    admin_maker = _principal(maker.id, (Role.ADMIN, None))
    admin_checker = _principal(checker.id, (Role.ADMIN, None))
    actor = ADMIN_ACTOR
    request = await grants.request(actor, admin_maker, target.id, Role.COMPLIANCE_OFFICER, None)
    assert isinstance(request, Approval)
    async with sessions() as session:
        assert await identity.active_grants(session, target.id) == []
    with pytest.raises(NotPermitted, match="someone other than its maker"):
        await grants.decide(actor, admin_maker, request.id, approve=True)
    # Nor can the user it is for, whatever roles they hold.
    grantee = _principal(target.id, (Role.ADMIN, None))
    with pytest.raises(NotPermitted, match="someone other than its grantee"):
        await grants.decide(actor, grantee, request.id, approve=True)
    with pytest.raises(NotPermitted, match=r"grants\.approve"):
        await grants.decide(
            actor, _principal(outsider.id, (Role.SUPERVISOR, None)), request.id, approve=True
        )
    decided = await grants.decide(actor, admin_checker, request.id, approve=True, reason="ok")
    assert decided.status == "approved"
    async with sessions() as session:
        held = await identity.active_grants(session, target.id)
        assert [(g.role, g.approval_id) for g in held] == [("compliance_officer", request.id)]

    # A non-privileged role is granted at once; a rejected request grants nothing.
    direct = await grants.request(actor, admin_maker, target.id, Role.AGENT, None)
    assert not isinstance(direct, Approval)
    rejected = await grants.request(actor, admin_maker, target.id, Role.AUDITOR, None)
    assert isinstance(rejected, Approval)
    decided = await grants.decide(actor, admin_checker, rejected.id, approve=False)
    assert decided.status == "rejected"
    async with sessions() as session:
        roles = sorted(g.role for g in await identity.active_grants(session, target.id))
        assert roles == ["agent", "compliance_officer"]


def test_permissions_that_read_content_or_change_records_are_sensitive() -> None:
    named = {
        Permission.ARCHIVE_READ,
        Permission.ARCHIVE_IMPORT,
        Permission.USERS_MANAGE,
        Permission.GRANTS_APPROVE,
        *(p for p in Permission if p.value.startswith("audit.")),
    }
    assert all(p.sensitive for p in named)
    assert all(isinstance(p.sensitive, bool) for p in Permission)  # each declares it
    assert Role.SUPERVISOR in SENSITIVE_ROLES  # it reads content, as an officer does


async def test_every_role_with_a_sensitive_permission_needs_approval_and_totp(
    identity: IdentityService, grants: GrantService, sessions: Sessions
) -> None:
    """Derived from the permission table, role by role and permission by permission:
    a role added later cannot slip past the rule."""
    maker, checker = [await _user(identity, sessions, n) for n in ("maker", "checker")]
    admin_maker = _principal(maker.id, (Role.ADMIN, None))
    admin_checker = _principal(checker.id, (Role.ADMIN, None))
    for role in Role:
        sensitive = [p for p in Permission if p in ROLE_PERMISSIONS[role] and p.sensitive]
        target = await _user(identity, sessions, f"holder-{role.value}")
        result = await grants.request(ADMIN_ACTOR, admin_maker, target.id, role, None)
        if sensitive:
            assert isinstance(result, Approval), (role, sensitive)
            async with sessions() as session:
                assert await identity.active_grants(session, target.id) == [], role
                assert not await identity.needs_mfa(session, target)
            await grants.decide(ADMIN_ACTOR, admin_checker, result.id, approve=True)
        else:
            assert isinstance(result, Grant), role
        async with sessions() as session:
            assert [g.role for g in await identity.active_grants(session, target.id)] == [role]
            assert await identity.needs_mfa(session, target) == bool(sensitive), role


async def test_a_first_sensitive_role_ends_sessions_opened_without_totp(
    identity: IdentityService, sessions: Sessions
) -> None:
    user = await _user(identity, sessions, "bob")
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        cookie, _ = await identity.start_session(session, user, mfa_verified=True)
        await identity.apply_grant(session, user, Role.AGENT, None, granted_by=None)
    async with sessions() as session:
        assert await identity.find_session(session, cookie) is not None  # nothing sensitive
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        await identity.apply_grant(session, user, Role.SUPERVISOR, None, granted_by=None)
    async with sessions() as session:
        assert await identity.find_session(session, cookie) is None  # signing in asks for TOTP


async def _enrolled(
    identity: IdentityService, sessions: Sessions, clock: FixedClock, name: str
) -> tuple[User, pyotp.TOTP]:
    """A supervisor whose authenticator is enrolled (its first code used)."""
    user = await _user(identity, sessions, name)
    async with sessions() as session, session.begin():
        user = await session.merge(user)
        await identity.apply_grant(session, user, Role.SUPERVISOR, None, granted_by=None)
        totp = pyotp.TOTP((await identity.begin_totp(session, user)).secret)
        await identity.verify_totp(session, user, totp.at(clock.now()))
    clock.advance(timedelta(seconds=30))
    return user, totp


def _wrong(totp: pyotp.TOTP, clock: FixedClock) -> str:
    valid = {totp.at(clock.now() + timedelta(seconds=s)) for s in (-30, 0, 30)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


async def _half_signed_in(
    identity: IdentityService, sessions: Sessions, user: User
) -> tuple[str, WebSession]:
    async with sessions() as session, session.begin():
        current = await session.get(User, user.id)  # not merge(): it would undo the count
        assert current is not None
        return await identity.start_session(session, current, mfa_verified=False)


async def test_wrong_codes_lock_the_user_out_and_end_half_signed_in_sessions(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    user, totp = await _enrolled(identity, sessions, clock, "carol")
    async with sessions() as session, session.begin():
        signed_in, _ = await identity.start_session(session, user, mfa_verified=True)
    first_cookie, first = await _half_signed_in(identity, sessions, user)
    other_cookie, _ = await _half_signed_in(identity, sessions, user)
    for _ in range(MAX_FAILED_LOGINS - 1):
        async with sessions() as session, session.begin():
            with pytest.raises(InvalidCredentials):
                await identity.complete_sign_in(session, first, _wrong(totp, clock))
        # The right password in between does not wipe out the wrong codes.
        async with sessions() as session, session.begin():
            await identity.check_password(session, "carol", PASSWORD)
    async with sessions() as session, session.begin():
        with pytest.raises(AccountLocked) as locked:
            await identity.complete_sign_in(session, first, _wrong(totp, clock))
    assert locked.value.until == clock.now() + FIRST_LOCKOUT
    async with sessions() as session:
        # Every half-signed-in session has ended; a signed-in one goes on.
        assert await identity.find_session(session, first_cookie) is None
        assert await identity.find_session(session, other_cookie) is None
        assert await identity.find_session(session, signed_in) is not None
        with pytest.raises(AccountLocked):
            await identity.check_password(session, "carol", PASSWORD)

    # Until the lockout ends, the right code is refused too.
    _, late = await _half_signed_in(identity, sessions, user)
    async with sessions() as session, session.begin():
        with pytest.raises(AccountLocked):
            await identity.complete_sign_in(session, late, totp.at(clock.now()))
    clock.advance(FIRST_LOCKOUT)
    _, fresh = await _half_signed_in(identity, sessions, user)
    async with sessions() as session, session.begin():
        await identity.complete_sign_in(session, fresh, totp.at(clock.now()))
    async with sessions() as session:
        stored = await session.get(User, user.id)
        assert stored is not None
        assert (stored.failed_logins, stored.locked_until) == (0, None)


async def test_concurrent_wrong_codes_are_all_counted(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    user, totp = await _enrolled(identity, sessions, clock, "dave")
    wrong = _wrong(totp, clock)

    async def guess() -> type[IdentityError] | None:
        async with sessions() as session, session.begin():
            guesser = await session.get(User, user.id)
            assert guesser is not None
            try:
                await identity.verify_totp(session, guesser, wrong)
            except IdentityError as exc:  # inside the transaction: the count commits
                return type(exc)
        return None

    outcomes = await asyncio.gather(*(guess() for _ in range(12)))
    assert outcomes.count(InvalidCredentials) == MAX_FAILED_LOGINS - 1
    assert outcomes.count(AccountLocked) == 12 - (MAX_FAILED_LOGINS - 1)
