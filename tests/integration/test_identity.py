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
    TotpEnrolment,
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
    return await identity.add_user(ADMIN_ACTOR, name, PASSWORD)


async def _stored(sessions: Sessions, user: User) -> User:
    async with sessions() as session:
        stored = await session.get(User, user.id)
        assert stored is not None
        return stored


async def _half_signed_in(identity: IdentityService, name: str) -> tuple[str, WebSession]:
    """The cookie and session of a sign-in whose password was right."""
    cookie = await identity.sign_in(ADMIN_ACTOR, name, PASSWORD)
    found = await identity.resolve_session(cookie)
    assert found is not None
    return cookie, found[0]


async def _supervisor(grants: GrantService, user: User) -> None:
    # No admin exists in these tests: the operator's grant applies at once.
    assert isinstance(
        await grants.grant_as_operator(ADMIN_ACTOR, user.id, Role.SUPERVISOR, None), Grant
    )


async def test_passwords_are_argon2id_and_checked(
    identity: IdentityService, sessions: Sessions
) -> None:
    user = await _user(identity, sessions)
    assert user.password_hash is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    found = await identity.resolve_session(await identity.sign_in(ADMIN_ACTOR, "ALICE", PASSWORD))
    assert found is not None
    assert found[0].user_id == user.id
    with pytest.raises(InvalidCredentials):
        await identity.sign_in(ADMIN_ACTOR, "alice", "wrong password!")
    with pytest.raises(InvalidCredentials):
        await identity.sign_in(ADMIN_ACTOR, "nobody", PASSWORD)
    with pytest.raises(ValueError, match="at least"):
        await identity.add_user(ADMIN_ACTOR, "bob", "short")


async def test_lockout_backs_off_and_expires(
    identity: IdentityService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(InvalidCredentials):
            await identity.sign_in(ADMIN_ACTOR, "alice", "wrong password!")
    # Locked: even the right password is refused until the lock expires.
    with pytest.raises(AccountLocked) as locked:
        await identity.sign_in(ADMIN_ACTOR, "alice", PASSWORD)
    assert locked.value.until == clock.now() + FIRST_LOCKOUT

    clock.advance(FIRST_LOCKOUT + timedelta(seconds=1))
    with pytest.raises(InvalidCredentials):
        await identity.sign_in(ADMIN_ACTOR, "alice", "wrong again!!")
    with pytest.raises(AccountLocked) as again:
        await identity.sign_in(ADMIN_ACTOR, "alice", PASSWORD)
    assert again.value.until == clock.now() + 2 * FIRST_LOCKOUT  # doubled

    clock.advance(3 * FIRST_LOCKOUT)
    _, pending = await _half_signed_in(identity, "alice")
    # The right password alone clears nothing: a second factor may follow.
    assert (await _stored(sessions, user)).failed_logins == MAX_FAILED_LOGINS + 1
    await identity.finish_sign_in(ADMIN_ACTOR, pending, None)  # alice needs no TOTP
    stored = await _stored(sessions, user)
    assert (stored.failed_logins, stored.locked_until) == (0, None)


async def test_totp_enrolment_and_replay(
    identity: IdentityService, grants: GrantService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    await _supervisor(grants, user)
    _, pending = await _half_signed_in(identity, "alice")
    enrolment = await identity.second_factor(ADMIN_ACTOR, pending)
    assert isinstance(enrolment, TotpEnrolment)
    assert enrolment.uri.startswith("otpauth://totp/Strongroom:alice")
    # Asking again before confirming shows the same secret.
    again = await identity.second_factor(ADMIN_ACTOR, pending)
    assert isinstance(again, TotpEnrolment)
    assert again.secret == enrolment.secret
    totp = pyotp.TOTP(enrolment.secret)
    with pytest.raises(InvalidCredentials):
        await identity.finish_sign_in(
            ADMIN_ACTOR, pending, "000000" if totp.at(clock.now()) != "000000" else "111111"
        )
    await identity.finish_sign_in(ADMIN_ACTOR, pending, totp.at(clock.now()))
    stored = await _stored(sessions, user)
    assert stored.mfa_enrolled_at == clock.now()
    assert stored.totp_secret_sealed is not None
    assert enrolment.secret.encode() not in stored.totp_secret_sealed
    _, pending = await _half_signed_in(identity, "alice")
    with pytest.raises(InvalidCredentials):  # the same code cannot be used twice
        await identity.finish_sign_in(ADMIN_ACTOR, pending, totp.at(clock.now()))
    clock.advance(timedelta(seconds=30))
    await identity.finish_sign_in(ADMIN_ACTOR, pending, totp.at(clock.now()))
    await identity.forget_mfa(ADMIN_ACTOR, user.id)
    assert (await _stored(sessions, user)).mfa_enrolled_at is None


async def test_totp_takes_one_step_of_drift_and_never_a_step_at_or_before_the_last(
    identity: IdentityService, grants: GrantService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    await _supervisor(grants, user)
    _, pending = await _half_signed_in(identity, "alice")
    enrolment = await identity.second_factor(ADMIN_ACTOR, pending)
    assert isinstance(enrolment, TotpEnrolment)
    totp = pyotp.TOTP(enrolment.secret)
    step = timedelta(seconds=totp.interval)

    async def verify(at: timedelta) -> bool:
        """Whether the code of the step ``at`` from now is taken."""
        _, pending = await _half_signed_in(identity, "alice")
        try:
            await identity.finish_sign_in(ADMIN_ACTOR, pending, totp.at(clock.now() + at))
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
    identity: IdentityService, grants: GrantService, sessions: Sessions, clock: FixedClock
) -> None:
    user = await _user(identity, sessions)
    await grants.grant_as_operator(ADMIN_ACTOR, user.id, Role.COMPLIANCE_OFFICER, None)
    new = await identity.issue_token(
        ADMIN_ACTOR,
        user.id,
        name="ci",
        scopes=frozenset({Permission.ARCHIVE_READ}),
        lifetime=timedelta(hours=1),
    )
    async with sessions() as session:
        stored = (await session.scalars(select(ApiToken))).one()
    # A token holds only permissions its user holds; the refusal names the missing one.
    with pytest.raises(NotPermitted, match=r"alice lacks audit\.read, users\.manage"):
        await identity.issue_token(
            ADMIN_ACTOR,
            user.id,
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

    other = await identity.issue_token(
        ADMIN_ACTOR,
        user.id,
        name="x",
        scopes=frozenset({Permission.ARCHIVE_READ}),
        lifetime=timedelta(days=1),
    )
    await identity.authenticate_token(other.secret)
    await identity.withdraw_token(ADMIN_ACTOR, other.id)
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
    direct = await grants.request(actor, admin_maker, target.id, Role.REGULATOR, None)
    assert not isinstance(direct, Approval)
    rejected = await grants.request(actor, admin_maker, target.id, Role.AUDITOR, None)
    assert isinstance(rejected, Approval)
    decided = await grants.decide(actor, admin_checker, rejected.id, approve=False)
    assert decided.status == "rejected"
    async with sessions() as session:
        roles = sorted(g.role for g in await identity.active_grants(session, target.id))
        assert roles == ["compliance_officer", "regulator"]


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
    identity: IdentityService, grants: GrantService, sessions: Sessions
) -> None:
    user = await _user(identity, sessions, "bob")
    _, pending = await _half_signed_in(identity, "bob")
    cookie = await identity.second_factor(ADMIN_ACTOR, pending)  # bob needs no TOTP
    assert isinstance(cookie, str)
    await grants.grant_as_operator(ADMIN_ACTOR, user.id, Role.REGULATOR, None)
    assert await identity.resolve_session(cookie) is not None  # nothing sensitive
    await _supervisor(grants, user)
    assert await identity.resolve_session(cookie) is None  # signing in asks for TOTP


async def _enrolled(
    identity: IdentityService, grants: GrantService, clock: FixedClock, name: str
) -> tuple[User, pyotp.TOTP, str]:
    """A supervisor whose authenticator is enrolled (its first code used), and the
    cookie of the session that code signed in."""
    user = await identity.add_user(ADMIN_ACTOR, name, PASSWORD)
    await _supervisor(grants, user)
    _, pending = await _half_signed_in(identity, name)
    enrolment = await identity.second_factor(ADMIN_ACTOR, pending)
    assert isinstance(enrolment, TotpEnrolment)
    totp = pyotp.TOTP(enrolment.secret)
    signed_in = await identity.finish_sign_in(ADMIN_ACTOR, pending, totp.at(clock.now()))
    clock.advance(timedelta(seconds=30))
    return user, totp, signed_in


def _wrong(totp: pyotp.TOTP, clock: FixedClock) -> str:
    valid = {totp.at(clock.now() + timedelta(seconds=s)) for s in (-30, 0, 30)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


async def test_wrong_codes_lock_the_user_out_and_end_half_signed_in_sessions(
    identity: IdentityService, grants: GrantService, sessions: Sessions, clock: FixedClock
) -> None:
    user, totp, signed_in = await _enrolled(identity, grants, clock, "carol")
    first_cookie, first = await _half_signed_in(identity, "carol")
    other_cookie, _ = await _half_signed_in(identity, "carol")
    for _ in range(MAX_FAILED_LOGINS - 1):
        with pytest.raises(InvalidCredentials):
            await identity.finish_sign_in(ADMIN_ACTOR, first, _wrong(totp, clock))
        # The right password in between does not wipe out the wrong codes.
        await identity.sign_in(ADMIN_ACTOR, "carol", PASSWORD)
    with pytest.raises(AccountLocked) as locked:
        await identity.finish_sign_in(ADMIN_ACTOR, first, _wrong(totp, clock))
    assert locked.value.until == clock.now() + FIRST_LOCKOUT
    # Every half-signed-in session has ended; a signed-in one goes on.
    assert await identity.resolve_session(first_cookie) is None
    assert await identity.resolve_session(other_cookie) is None
    assert await identity.resolve_session(signed_in) is not None
    with pytest.raises(AccountLocked):
        await identity.sign_in(ADMIN_ACTOR, "carol", PASSWORD)

    # Until a lockout ends, the right code is refused too: here one a wrong password
    # caused (it leaves the half-signed-in session open).
    clock.advance(FIRST_LOCKOUT)
    _, late = await _half_signed_in(identity, "carol")
    with pytest.raises(InvalidCredentials):
        await identity.sign_in(ADMIN_ACTOR, "carol", "wrong password!")
    with pytest.raises(AccountLocked):
        await identity.finish_sign_in(ADMIN_ACTOR, late, totp.at(clock.now()))
    clock.advance(2 * FIRST_LOCKOUT)
    _, fresh = await _half_signed_in(identity, "carol")
    await identity.finish_sign_in(ADMIN_ACTOR, fresh, totp.at(clock.now()))
    stored = await _stored(sessions, user)
    assert (stored.failed_logins, stored.locked_until) == (0, None)


async def test_concurrent_wrong_codes_are_all_counted(
    identity: IdentityService, grants: GrantService, clock: FixedClock
) -> None:
    _, totp, _ = await _enrolled(identity, grants, clock, "dave")
    wrong = _wrong(totp, clock)
    pending = [(await _half_signed_in(identity, "dave"))[1] for _ in range(12)]

    async def guess(at: WebSession) -> str | None:
        try:
            await identity.finish_sign_in(ADMIN_ACTOR, at, wrong)
        except IdentityError as exc:  # refused: the count committed with its event
            return "locked" if isinstance(exc, AccountLocked) else str(exc)
        return None

    outcomes = await asyncio.gather(*(guess(at) for at in pending))
    # Guesses are counted before they are checked: only the first ones are told
    # the code is wrong; the rest find the user locked out (or, once locked, their
    # half-signed-in session ended).
    assert outcomes.count("invalid code") == MAX_FAILED_LOGINS - 1, outcomes
    assert "locked" in outcomes
    assert set(outcomes) <= {"invalid code", "locked", "this sign-in has ended"}, outcomes
