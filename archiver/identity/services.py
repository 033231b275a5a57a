"""Who may do what: users, credentials, roles, grants and maker-checker approvals.

The permission matrix below is the single source of truth for authorization;
the README mirrors it. Grants are scoped to one business account or to all
(``account_id`` NULL); the default is deny. ``admin`` manages users and
accounts but reads no message content unless a content role is granted too. A
``regulator`` holds no standing permission: only what is explicitly shared.

Passwords and API-token secrets are hashed with argon2id. TOTP secrets are
sealed under the user's own subject key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.errors import AccountNotFound, ArchiverError, InvalidInput
from archiver.crypto import envelope
from archiver.crypto.keyring import Keyring
from archiver.identity.models import ApiToken, Approval, Grant, User, WebSession
from archiver.identity.passwords import password_problem


class Role(StrEnum):
    """The roles a user can be granted."""

    ADMIN = "admin"
    RECORDS_MANAGER = "records_manager"
    COMPLIANCE_OFFICER = "compliance_officer"
    SUPERVISOR = "supervisor"
    AGENT = "agent"
    AUDITOR = "auditor"
    REGULATOR = "regulator"


class Permission(StrEnum):
    """Everything an authenticated request can be allowed to do.

    Each permission declares whether it is *sensitive*: whether it reads message
    content or the audit trail, or changes records, users, grants, accounts or the
    policy applied to records. A role that carries a sensitive permission needs TOTP,
    and granting it needs a second person's approval (``SENSITIVE_ROLES``). The class
    does not build if a permission leaves this out.
    """

    _value_: str
    sensitive: bool

    # Only the members below are made here; looking one up by its value is not.
    def __new__(cls, value: str, sensitive: bool | None = None) -> Permission:
        if sensitive is None:
            raise TypeError(f"permission {value!r} must declare whether it is sensitive")
        member = str.__new__(cls, value)
        member._value_ = value
        member.sensitive = sensitive
        return member

    USERS_MANAGE = "users.manage", True
    GRANTS_APPROVE = "grants.approve", True
    # Registers numbers and their webhook secrets: decides what becomes a record.
    ACCOUNTS_MANAGE = "accounts.manage", True
    ACCOUNTS_READ = "accounts.read", False  # which numbers are captured, no content
    ARCHIVE_READ = "archive.read", True
    ARCHIVE_IMPORT = "archive.import", True
    AUDIT_READ = "audit.read", True
    AUDIT_EXPORT = "audit.export", True
    # Decides which records are flagged and which outgoing messages are held or blocked.
    LEXICON_MANAGE = "lexicon.manage", True
    METRICS_READ = "metrics.read", False  # counters of the service's health, no content
    # Sends in the firm's name: every message passes the policy, yet a stolen agent
    # login could still message customers, so it needs a second factor.
    OUTBOX_SEND = "outbox.send", True
    # Reads held messages and releases them past the policy's hold.
    OUTBOX_APPROVE = "outbox.approve", True
    TEMPLATES_READ = "templates.read", False  # the firm's own wording, no personal data
    TEMPLATES_MANAGE = "templates.manage", True  # drafts and submits what may be sent
    TEMPLATES_APPROVE = "templates.approve", True  # the checker of a template
    CONSENT_READ = "consent.read", True  # the evidence of a contact's consent
    CONSENT_RECORD = "consent.record", True  # decides whether a contact may be messaged
    POLICY_MANAGE = "policy.manage", True  # quiet hours, rates, tiers, consent coverage


# The permission matrix: which role may do what. Mirrored in the README.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(
        {
            Permission.USERS_MANAGE,
            Permission.GRANTS_APPROVE,
            Permission.ACCOUNTS_MANAGE,
            Permission.ACCOUNTS_READ,
            Permission.METRICS_READ,
        }
    ),
    Role.RECORDS_MANAGER: frozenset(
        {Permission.ACCOUNTS_READ, Permission.ARCHIVE_IMPORT, Permission.CONSENT_RECORD}
    ),
    Role.COMPLIANCE_OFFICER: frozenset(
        {
            Permission.ACCOUNTS_READ,
            Permission.ARCHIVE_READ,
            Permission.LEXICON_MANAGE,
            Permission.TEMPLATES_READ,
            Permission.TEMPLATES_MANAGE,
            Permission.TEMPLATES_APPROVE,
            Permission.CONSENT_READ,
            Permission.CONSENT_RECORD,
            Permission.POLICY_MANAGE,
        }
    ),
    Role.SUPERVISOR: frozenset(
        {
            Permission.ACCOUNTS_READ,
            Permission.ARCHIVE_READ,
            Permission.OUTBOX_SEND,
            Permission.OUTBOX_APPROVE,
            Permission.TEMPLATES_READ,
            Permission.TEMPLATES_MANAGE,
            Permission.CONSENT_READ,
            Permission.CONSENT_RECORD,
        }
    ),
    Role.AGENT: frozenset({Permission.OUTBOX_SEND, Permission.TEMPLATES_READ}),
    Role.AUDITOR: frozenset({Permission.AUDIT_READ, Permission.AUDIT_EXPORT}),
    Role.REGULATOR: frozenset(),
}

# Roles that need TOTP, and whose grant needs a second person's approval: derived
# from their permissions, so that no role carrying a sensitive one can be left out.
SENSITIVE_ROLES = frozenset(
    role for role, permissions in ROLE_PERMISSIONS.items() if any(p.sensitive for p in permissions)
)
# Permissions that only make sense across all accounts.
GLOBAL_PERMISSIONS = frozenset(
    {
        Permission.USERS_MANAGE,
        Permission.GRANTS_APPROVE,
        Permission.AUDIT_READ,
        Permission.AUDIT_EXPORT,
        Permission.LEXICON_MANAGE,
        Permission.METRICS_READ,
    }
)

MAX_FAILED_LOGINS = 5
FIRST_LOCKOUT = timedelta(minutes=1)
LONGEST_LOCKOUT = timedelta(hours=24)
SESSION_LIFETIME = timedelta(hours=8)
TOKEN_PREFIX = "sr"  # noqa: S105  (the public marker of our tokens, not a secret)
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{1,62}[a-z0-9]")
_USER_ID = re.compile(r"usr_[0-9a-f]{16}")
_TOKEN = re.compile(r"sr_([a-z0-9]{12})_([A-Za-z0-9_-]{20,})")
_LAST_USED_RESOLUTION = timedelta(minutes=1)
_ENDED = "this sign-in has ended"


async def permission_holders(
    session: AsyncSession, permission: Permission, account_ids: Iterable[str]
) -> dict[str, frozenset[str]]:
    """For each of ``account_ids``, the users (not disabled) whose standing grants
    give ``permission`` there: one query for any number of accounts."""
    wanted = set(account_ids)
    roles = [role.value for role, held in ROLE_PERMISSIONS.items() if permission in held]
    if not wanted or not roles:
        return {account_id: frozenset() for account_id in wanted}
    rows = await session.execute(
        select(Grant.user_id, Grant.account_id)
        .join(User, User.id == Grant.user_id)
        .where(
            Grant.revoked_at.is_(None),
            Grant.role.in_(roles),
            User.disabled.is_(False),
            or_(Grant.account_id.is_(None), Grant.account_id.in_(wanted)),
        )
    )
    holders: dict[str, set[str]] = {account_id: set() for account_id in wanted}
    for user_id, scope in rows:
        for account_id in wanted if scope is None else (scope,):
            holders[account_id].add(user_id)
    return {account_id: frozenset(users) for account_id, users in holders.items()}


class IdentityError(ArchiverError):
    """Root of identity errors.

    ::

        IdentityError
        ├── InvalidCredentials   wrong user, password, code or token (deliberately vague)
        ├── AccountLocked        too many failed attempts; try again after ``until``
        ├── MfaRequired          the role needs TOTP and it is not (yet) verified
        ├── NotPermitted         the user lacks the permission (or decides own request)
        ├── IdentityConflict     username taken, grant exists, approval already decided
        └── UnknownUser          no such user (or token of the caller)
    """


class InvalidCredentials(IdentityError):
    """The credentials do not match; no detail on which part."""


class AccountLocked(IdentityError):
    """Too many failed sign-ins."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"locked until {until.isoformat()}")
        self.until = until


class MfaRequired(IdentityError):
    """A privileged role needs a verified TOTP code."""


class NotPermitted(IdentityError):
    """The actor may not do this."""


class IdentityConflict(IdentityError):
    """The change collides with existing state."""


class UnknownUser(IdentityError):
    """No user (or, for its owner, no token) answers to the name given."""


ALL_ACCOUNTS = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated actor and what it may do, per account (``None`` = all)."""

    user_id: str
    username: str
    grants: frozenset[tuple[Role, str | None]]
    via: str
    token_scopes: frozenset[Permission] | None = None
    roles: frozenset[Role] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", frozenset(role for role, _ in self.grants))

    @property
    def actor(self) -> str:
        """How the audit trail names this principal."""
        return self.user_id if self.via != "token" else f"{self.user_id}:token"

    def _permitted(self, role: Role, permission: Permission) -> bool:
        if permission not in ROLE_PERMISSIONS[role]:
            return False
        return self.token_scopes is None or permission in self.token_scopes

    def allows(self, permission: Permission, account_id: str | None = None) -> bool:
        """True if some grant gives ``permission`` on ``account_id``; with no account
        given, on at least one. Global permissions need a grant on all accounts."""
        for role, scope in self.grants:
            if not self._permitted(role, permission):
                continue
            if permission in GLOBAL_PERMISSIONS:
                if scope is ALL_ACCOUNTS:
                    return True
            elif scope is ALL_ACCOUNTS or account_id is None or scope == account_id:
                return True
        return False

    def accounts_for(self, permission: Permission) -> set[str] | None:
        """The accounts on which ``permission`` holds; ``None`` means every account."""
        scoped: set[str] = set()
        for role, scope in self.grants:
            if self._permitted(role, permission):
                if scope is ALL_ACCOUNTS:
                    return None
                scoped.add(scope)
        return scoped

    def role_for(self, permission: Permission) -> str | None:
        """A role that grants ``permission``, for the audit trail."""
        return next(
            (r.value for r, _ in sorted(self.grants) if self._permitted(r, permission)), None
        )


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly created API token; ``secret`` is shown once and never stored."""

    id: str
    prefix: str
    secret: str
    expires_at: datetime
    name: str = ""
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserStanding:
    """A user as administrators see them: their active grants and lockout."""

    user: User
    grants: list[Grant]
    locked: bool


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """What a user needs to add Strongroom to an authenticator app."""

    secret: str
    uri: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Why a sign-in was refused, as the audit trail says it.
_SIGN_IN_REASONS: tuple[tuple[type[IdentityError], str], ...] = (
    (AccountLocked, "locked"),
    (MfaRequired, "MFA required"),
)


def _sign_in_reason(exc: IdentityError, otherwise: str) -> str:
    return next((why for cls, why in _SIGN_IN_REASONS if isinstance(exc, cls)), otherwise)


class _UnitOfWork:
    """How the services change state: one write transaction per change, its audit
    event recorded in it last, and a refusal recorded as ``denied`` on its own
    once the change's transaction has rolled back."""

    def __init__(self, writer: Writer, audit: AuditLog) -> None:
        self.writer = writer
        self.audit = audit

    @contextlib.asynccontextmanager
    async def change(
        self,
        actor: Actor,
        action: str,
        *,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[AsyncSession]:
        """A write transaction for ``action``; a domain error raised in it is
        audited as refused (with ``target`` and ``details``), then re-raised."""
        try:
            async with self.writer.transaction() as session:
                yield session
        except ArchiverError as exc:
            await self.refused(actor, action, str(exc), target=target, details=details)
            raise

    async def refused(
        self,
        actor: Actor,
        action: str,
        reason: str,
        *,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record, once committed, that ``action`` was refused."""
        await self.audit.record_durable(
            actor.entry(action, outcome="denied", target=target, reason=reason, details=details)
        )


class IdentityService:
    """Users, credentials, sessions, tokens and grants.

    The methods that take an :class:`Actor` are the use cases: each is one unit of
    work that records its audit event with its change, and the only public way to
    change identity state. The public methods that take a session only read; the
    steps that change state are private to this module, run inside a use case's
    transaction."""

    def __init__(
        self,
        keyring: Keyring,
        clock: Clock,
        *,
        writer: Writer,
        audit: AuditLog,
        sessions: async_sessionmaker[AsyncSession],
        issuer: str = "Strongroom",
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._work = _UnitOfWork(writer, audit)
        self._audit = audit
        self._sessions = sessions
        self._hasher = PasswordHasher()  # argon2id with the library's current defaults
        self._issuer = issuer
        # Verifying argon2 takes tens of milliseconds; a verified token is remembered
        # (by its SHA-256) so that each request only re-reads its revocation and expiry.
        self._verified_tokens: dict[str, str] = {}

    # -- users ---------------------------------------------------------------

    async def _create_user(
        self, session: AsyncSession, username: str, password: str, *, created_by: str | None
    ) -> User:
        """Create a user with a password; raise ``InvalidInput`` or ``IdentityConflict``."""
        username = username.strip().lower()
        if not _USERNAME.fullmatch(username):
            raise InvalidInput("username: 3-64 of a-z 0-9 . _ @ + -")
        if _USER_ID.fullmatch(username):
            # Users are found by id or by name (find_user): a name may not be an id.
            raise InvalidInput("username: cannot have the form of a user id")
        self._check_password_policy(password, username)
        user = User(
            id="usr_" + secrets.token_hex(8),  # the form _USER_ID recognises
            username=username,
            password_hash=self._hasher.hash(password),
            failed_logins=0,
            disabled=False,
            created_at=self._clock.now(),
            created_by=created_by,
        )
        try:
            async with session.begin_nested():
                session.add(user)
        except DBIntegrityError:
            raise IdentityConflict(f"user {username} already exists") from None
        return user

    def _check_password_policy(self, password: str, username: str) -> None:
        problem = password_problem(password, username)
        if problem is not None:
            raise InvalidInput(problem)

    async def user_by_name(self, session: AsyncSession, username: str) -> User | None:
        """The user with ``username``, if any."""
        return (
            await session.scalars(select(User).where(User.username == username.strip().lower()))
        ).one_or_none()

    async def users(self, session: AsyncSession) -> list[User]:
        """Every user, oldest first."""
        return list(await session.scalars(select(User).order_by(User.created_at)))

    async def _set_password(self, session: AsyncSession, user: User, password: str) -> None:
        """Replace the user's password and clear any lockout."""
        self._check_password_policy(password, user.username)
        user.password_hash = self._hasher.hash(password)
        user.failed_logins = 0
        user.locked_until = None
        await session.flush()

    async def _check_password(self, session: AsyncSession, username: str, password: str) -> User:
        """Verify a password with back-off and lockout; raise ``InvalidCredentials``
        or ``AccountLocked``. The caller commits (failures are counted).

        Wrong passwords and wrong TOTP codes count together, and only a complete
        sign-in (``_complete_sign_in``) clears them: the right password alone does
        not, or knowing it would reset the count of guessed codes."""
        user = await self.user_by_name(session, username)
        now = self._clock.now()
        if user is None or user.disabled or user.password_hash is None:
            # Spend the same effort as a real check, so timing does not reveal usernames.
            self._hasher.hash(password)
            raise InvalidCredentials("invalid username or password")
        if user.locked_until is not None and user.locked_until > now:
            raise AccountLocked(user.locked_until)
        try:
            self._hasher.verify(user.password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            self._lock_after(user, await self._count_attempt(session, user, now), now)
            await session.flush()
            raise InvalidCredentials("invalid username or password") from None
        if self._hasher.check_needs_rehash(user.password_hash):
            user.password_hash = self._hasher.hash(password)
        await session.flush()
        return user

    async def _count_attempt(self, session: AsyncSession, user: User, now: datetime) -> int:
        """Count a failed attempt in the database itself, so that concurrent ones are
        all counted; raise ``AccountLocked`` if the user is (or meanwhile became) locked."""
        count: int | None = await session.scalar(
            update(User)
            .where(
                User.id == user.id,
                or_(User.locked_until.is_(None), User.locked_until <= now),
            )
            .values(failed_logins=User.failed_logins + 1)
            .returning(User.failed_logins)
        )
        await session.refresh(user, ["failed_logins", "locked_until"])
        if count is None:
            raise AccountLocked(user.locked_until or now)
        return count

    @staticmethod
    def _lock_after(user: User, failures: int, now: datetime) -> datetime | None:
        """Lock the user out after too many failures; each further one doubles the
        lockout, up to a day. Returns the end of the lockout, if there is one."""
        if failures < MAX_FAILED_LOGINS:
            return None
        doubling = min(failures - MAX_FAILED_LOGINS, 12)
        user.locked_until = now + min(FIRST_LOCKOUT * 2**doubling, LONGEST_LOCKOUT)
        return user.locked_until

    @staticmethod
    def _clear_failures(user: User) -> None:
        user.failed_logins = 0
        user.locked_until = None

    # -- TOTP ------------------------------------------------------------------

    def _subject(self, user: User) -> str:
        return f"user:{user.id}"

    async def _totp_enrolment(self, session: AsyncSession, user: User) -> TotpEnrolment:
        """The unconfirmed enrolment of ``user``, started if there is none."""
        if user.totp_secret_sealed is None or user.mfa_enrolled_at is not None:
            return await self._begin_totp(session, user)
        secret = await self._totp_secret(session, user)
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=self._issuer)
        return TotpEnrolment(secret, uri)

    async def _totp_secret(self, session: AsyncSession, user: User) -> str:
        assert user.totp_secret_sealed is not None
        key = await self._keyring.key_by_id(
            session, envelope.read_header(user.totp_secret_sealed).key_id
        )
        return envelope.open_(key, f"{user.id}/totp", user.totp_secret_sealed).decode()

    async def _begin_totp(self, session: AsyncSession, user: User) -> TotpEnrolment:
        """Start (or restart) TOTP enrolment; it counts once a code is confirmed."""
        secret = pyotp.random_base32()
        key_id, key = await self._keyring.key_for(session, self._subject(user))
        user.totp_secret_sealed = envelope.seal(key, key_id, f"{user.id}/totp", secret.encode())
        user.mfa_enrolled_at = None
        user.totp_last_step = None
        await session.flush()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=self._issuer)
        return TotpEnrolment(secret, uri)

    async def _verify_totp(self, session: AsyncSession, user: User, code: str) -> None:
        """Check a TOTP code (one step of clock drift allowed; no code used twice).

        The first good code completes enrolment. Wrong codes count with wrong
        passwords towards the lockout; the one that locks the user out also ends
        their half-signed-in sessions, and while it lasts even the right code is
        refused. Raise ``InvalidCredentials`` or ``AccountLocked``; the caller
        commits (failures are counted).
        """
        if user.totp_secret_sealed is None:
            raise MfaRequired("no authenticator is enrolled")
        now = self._clock.now()
        # Counted before it is checked: concurrent guesses cannot pass the lockout.
        try:
            failures = await self._count_attempt(session, user, now)
        except AccountLocked:
            await self._end_sessions(session, user.id, pending_only=True)
            raise
        totp = pyotp.TOTP(await self._totp_secret(session, user))
        code = code.strip().replace(" ", "")
        step = int(now.timestamp()) // totp.interval
        for candidate in (step - 1, step, step + 1):
            expected = totp.at(candidate * totp.interval)
            if secrets.compare_digest(expected, code) and (
                user.totp_last_step is None or candidate > user.totp_last_step
            ):
                user.totp_last_step = candidate
                if user.mfa_enrolled_at is None:
                    user.mfa_enrolled_at = now
                self._clear_failures(user)
                await session.flush()
                return
        until = self._lock_after(user, failures, now)
        await session.flush()
        if until is not None:
            await self._end_sessions(session, user.id, pending_only=True)
            raise AccountLocked(until)
        raise InvalidCredentials("invalid code")

    async def _reset_mfa(self, session: AsyncSession, user: User) -> None:
        """Forget the user's authenticator; they enrol again at next sign-in."""
        user.totp_secret_sealed = None
        user.mfa_enrolled_at = None
        user.totp_last_step = None
        await session.flush()

    # -- grants and principals ---------------------------------------------

    async def active_grants(self, session: AsyncSession, user_id: str) -> list[Grant]:
        """The user's grants that are not revoked."""
        return list(
            await session.scalars(
                select(Grant).where(Grant.user_id == user_id, Grant.revoked_at.is_(None))
            )
        )

    async def needs_mfa(self, session: AsyncSession, user: User) -> bool:
        """True if any of the user's roles carries a sensitive permission."""
        return any(
            Role(g.role) in SENSITIVE_ROLES for g in await self.active_grants(session, user.id)
        )

    async def principal(
        self,
        session: AsyncSession,
        user: User,
        *,
        via: str,
        scopes: frozenset[Permission] | None = None,
    ) -> Principal:
        """What ``user`` may do now."""
        grants = frozenset(
            (Role(g.role), g.account_id) for g in await self.active_grants(session, user.id)
        )
        return Principal(user.id, user.username, grants, via, scopes)

    async def _apply_grant(
        self,
        session: AsyncSession,
        user: User,
        role: Role,
        account_id: str | None,
        *,
        granted_by: str | None,
        approval_id: int | None = None,
    ) -> Grant:
        """Give ``role`` to ``user`` now (callers enforce maker-checker).

        The first sensitive role a user gets ends their sessions: they were opened
        without TOTP, which signing in again asks for."""
        held = await self.active_grants(session, user.id)
        for grant in held:
            if grant.role == role.value and grant.account_id == account_id:
                raise IdentityConflict("that grant already exists")
        if role in SENSITIVE_ROLES and not any(Role(g.role) in SENSITIVE_ROLES for g in held):
            await self._end_sessions(session, user.id, pending_only=False)
        grant = Grant(
            user_id=user.id,
            role=role.value,
            account_id=account_id,
            granted_by=granted_by,
            granted_at=self._clock.now(),
            approval_id=approval_id,
        )
        session.add(grant)
        await session.flush()
        return grant

    async def _revoke_grant(
        self, session: AsyncSession, user: User, role: Role, account_id: str | None
    ) -> int:
        """Revoke the user's matching grants; return how many."""
        count = 0
        for grant in await self.active_grants(session, user.id):
            if grant.role == role.value and grant.account_id == account_id:
                grant.revoked_at = self._clock.now()
                count += 1
        await session.flush()
        return count

    async def admin_exists(self, session: AsyncSession) -> bool:
        """True once any active admin grant exists (after that, no more bootstrap)."""
        count = await session.scalar(
            select(func.count())
            .select_from(Grant)
            .where(Grant.role == Role.ADMIN.value, Grant.revoked_at.is_(None))
        )
        return bool(count)

    # -- API tokens ------------------------------------------------------------

    async def _create_token(
        self,
        session: AsyncSession,
        user: User,
        *,
        name: str,
        scopes: frozenset[Permission],
        lifetime: timedelta,
    ) -> NewToken:
        """Issue an API token; its secret is returned once and stored only hashed.

        Its scopes can only be permissions its user holds: raise ``NotPermitted``
        naming those they lack, or ``InvalidInput``."""
        if not timedelta(minutes=5) <= lifetime <= timedelta(days=366):
            raise InvalidInput("token lifetime must be between 5 minutes and 366 days")
        if not scopes:
            raise InvalidInput("a token needs at least one scope")
        holder = await self.principal(session, user, via="session")
        missing = sorted(p.value for p in scopes if not holder.allows(p))
        if missing:
            raise NotPermitted(
                f"{user.username} lacks {', '.join(missing)}: "
                "a token cannot hold a permission its user lacks"
            )
        prefix = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = self._clock.now()
        token = ApiToken(
            id="tok_" + secrets.token_hex(8),
            prefix=prefix,
            secret_hash=self._hasher.hash(secret),
            user_id=user.id,
            name=name[:100],
            scopes=",".join(sorted(scopes)),
            created_at=now,
            expires_at=now + lifetime,
        )
        session.add(token)
        await session.flush()
        return NewToken(
            token.id,
            prefix,
            f"{TOKEN_PREFIX}_{prefix}_{secret}",
            token.expires_at,
            token.name,
            tuple(token.scopes.split(",")),
        )

    async def _token_principal(
        self, session: AsyncSession, presented: str
    ) -> tuple[Principal, str, datetime | None]:
        """The principal of a bearer token, its id and last use; raise ``InvalidCredentials``."""
        match = _TOKEN.fullmatch(presented.strip())
        if match is None:
            raise InvalidCredentials("malformed token")
        prefix, secret = match.groups()
        token = (
            await session.scalars(select(ApiToken).where(ApiToken.prefix == prefix))
        ).one_or_none()
        now = self._clock.now()
        if token is None or token.revoked_at is not None or token.expires_at <= now:
            raise InvalidCredentials("unknown, revoked or expired token")
        fingerprint = _sha256(presented)
        if self._verified_tokens.get(fingerprint) != token.id:
            try:
                self._hasher.verify(token.secret_hash, secret)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                raise InvalidCredentials("unknown, revoked or expired token") from None
            self._verified_tokens[fingerprint] = token.id
        user = await session.get(User, token.user_id)
        if user is None or user.disabled:
            raise InvalidCredentials("unknown, revoked or expired token")
        scopes = frozenset(Permission(s) for s in token.scopes.split(",") if s)
        principal = await self.principal(session, user, via="token", scopes=scopes)
        return principal, token.id, token.last_used_at

    async def tokens(self, session: AsyncSession, user_id: str) -> list[ApiToken]:
        """A user's tokens, newest first."""
        return list(
            await session.scalars(
                select(ApiToken)
                .where(ApiToken.user_id == user_id)
                .order_by(ApiToken.created_at.desc())
            )
        )

    async def _revoke_token(self, session: AsyncSession, token_id: str) -> None:
        """Revoke a token now."""
        token = await session.get(ApiToken, token_id)
        if token is None:
            raise IdentityConflict("no such token")
        token.revoked_at = self._clock.now()
        await session.flush()

    # -- console sessions ----------------------------------------------------

    async def _start_session(
        self, session: AsyncSession, user: User, *, mfa_verified: bool
    ) -> tuple[str, WebSession]:
        """Open a console session; returns the cookie value (kept only hashed)."""
        cookie = secrets.token_urlsafe(32)
        now = self._clock.now()
        row = WebSession(
            id_sha256=_sha256(cookie),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            mfa_verified=mfa_verified,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
        session.add(row)
        await session.flush()
        return cookie, row

    async def find_session(
        self, session: AsyncSession, cookie: str
    ) -> tuple[WebSession, User] | None:
        """The live session and user behind a cookie value, if any."""
        row = await session.get(WebSession, _sha256(cookie))
        if row is None or row.revoked_at is not None or row.expires_at <= self._clock.now():
            return None
        user = await session.get(User, row.user_id)
        if user is None or user.disabled:
            return None
        return row, user

    async def _complete_sign_in(
        self, session: AsyncSession, pending: WebSession, code: str | None
    ) -> tuple[str, WebSession]:
        """Finish a half-signed-in session: check the TOTP code if the user's roles
        need one, then replace the session with a new one. The new cookie is
        returned; the old one stops working (a new id at each step up).

        Raise ``InvalidCredentials``, ``AccountLocked`` or ``MfaRequired``; the
        caller commits (failures are counted)."""
        # The user first, then the session: a code that locks the user out ends
        # their other half-signed-in sessions, which a concurrent guess holding its
        # session's lock while waiting for the user's would deadlock.
        user = await session.get(User, pending.user_id, with_for_update=True)
        row = await session.get(WebSession, pending.id_sha256, with_for_update=True)
        now = self._clock.now()
        if row is None or row.revoked_at is not None or row.expires_at <= now or row.mfa_verified:
            raise InvalidCredentials(_ENDED)
        if user is None or user.disabled or user.id != row.user_id:
            raise InvalidCredentials(_ENDED)
        if await self.needs_mfa(session, user):
            if code is None:
                raise MfaRequired("a code from the authenticator is required")
            await self._verify_totp(session, user, code)
        else:
            self._clear_failures(user)
        row.revoked_at = now
        return await self._start_session(session, user, mfa_verified=True)

    async def _end_session(self, session: AsyncSession, cookie: str) -> None:
        """Sign out: the cookie stops working at once."""
        row = await session.get(WebSession, _sha256(cookie))
        if row is not None:
            row.revoked_at = self._clock.now()
            await session.flush()

    async def _end_sessions(
        self, session: AsyncSession, user_id: str, *, pending_only: bool
    ) -> None:
        """End the user's live sessions (only the half-signed-in ones if ``pending_only``)."""
        query = update(WebSession).where(
            WebSession.user_id == user_id, WebSession.revoked_at.is_(None)
        )
        if pending_only:
            query = query.where(WebSession.mfa_verified.is_(False))
        await session.execute(query.values(revoked_at=self._clock.now()))

    # -- use cases (each one unit of work, audited with its change) ------------

    async def find_user(self, session: AsyncSession, user: str, *, lock: bool = False) -> User:
        """The user with id ``user``, or else with that username; raise ``UnknownUser``."""
        found = (
            await session.get(User, user, with_for_update=lock)
            if _USER_ID.fullmatch(user)
            else None
        )
        if found is None:
            found = await self.user_by_name(session, user)
        if found is None:
            raise UnknownUser(f"no user {user}")
        return found

    async def user_id_of(self, user: str) -> str:
        """The id of the user with id or username ``user``; raise ``UnknownUser``."""
        async with self._sessions() as session:
            return (await self.find_user(session, user)).id

    async def add_user(self, actor: Actor, username: str, password: str) -> User:
        """Create a user with no roles (``identity.user.create``)."""
        # A username is chosen by an administrator, not typed at sign-in, so a
        # refused creation names it in the clear.
        async with self._work.change(
            actor, "identity.user.create", target=f"username:{username[:200]}"
        ) as session:
            user = await self._create_user(session, username, password, created_by=actor.id)
            await self._audit.record_in(
                session, actor.entry("identity.user.create", target=f"user:{user.id}")
            )
        return user

    async def change_password(self, actor: Actor, user: str, password: str) -> None:
        """Set a user's password and clear their lockout (``identity.user.password``)."""
        async with self._work.change(
            actor, "identity.user.password", target=f"user:{user}"
        ) as session:
            found = await self.find_user(session, user, lock=True)
            await self._set_password(session, found, password)
            await self._audit.record_in(
                session, actor.entry("identity.user.password", target=f"user:{found.id}")
            )

    async def forget_mfa(self, actor: Actor, user: str) -> None:
        """Forget a user's authenticator (``identity.mfa.reset``)."""
        async with self._work.change(actor, "identity.mfa.reset", target=f"user:{user}") as session:
            found = await self.find_user(session, user, lock=True)
            await self._reset_mfa(session, found)
            await self._audit.record_in(
                session, actor.entry("identity.mfa.reset", target=f"user:{found.id}")
            )

    async def user_list(self) -> list[UserStanding]:
        """Every user with their active grants and whether they are locked out, oldest first."""
        now = self._clock.now()
        async with self._sessions() as session:
            return [
                UserStanding(
                    u,
                    await self.active_grants(session, u.id),
                    u.locked_until is not None and u.locked_until > now,
                )
                for u in await self.users(session)
            ]

    async def token_list(self, user: str) -> list[ApiToken]:
        """A user's tokens, newest first; raise ``UnknownUser``."""
        async with self._sessions() as session:
            return await self.tokens(session, (await self.find_user(session, user)).id)

    async def issue_token(
        self,
        actor: Actor,
        user: str,
        *,
        name: str,
        scopes: frozenset[Permission],
        lifetime: timedelta,
    ) -> NewToken:
        """Issue an API token to ``user`` (``identity.token.create``)."""
        async with self._work.change(
            actor, "identity.token.create", target=f"user:{user}"
        ) as session:
            holder = await self.find_user(session, user)
            new = await self._create_token(
                session, holder, name=name, scopes=scopes, lifetime=lifetime
            )
            await self._audit.record_in(
                session,
                actor.entry(
                    "identity.token.create",
                    target=f"token:{new.id}",
                    scope=",".join(new.scopes),
                    details={"user": holder.id},
                ),
            )
        return new

    async def withdraw_token(
        self, actor: Actor, token_id: str, *, owner: str | None = None
    ) -> ApiToken:
        """Revoke a token now (``identity.token.revoke``); with ``owner``, only one of
        that user's (another's answers ``UnknownUser`` as if it did not exist)."""
        async with self._work.change(
            actor, "identity.token.revoke", target=f"token:{token_id}"
        ) as session:
            token = await session.get(ApiToken, token_id, with_for_update=True)
            if token is None or (owner is not None and token.user_id != owner):
                raise UnknownUser("no such token")
            if token.revoked_at is not None:
                raise IdentityConflict(f"token {token_id} is already revoked")
            await self._revoke_token(session, token_id)
            await self._audit.record_in(
                session, actor.entry("identity.token.revoke", target=f"token:{token_id}")
            )
        return token

    async def authenticate_token(self, presented: str) -> Principal:
        """The principal of a bearer token, noting its last use (to the minute, through
        the writer); raise ``InvalidCredentials``."""
        async with self._sessions() as session:
            principal, token_id, last_used = await self._token_principal(session, presented)
        now = self._clock.now()
        # To the minute: a write on every request would queue each API call behind
        # the database's one write lock.
        if last_used is None or now - last_used >= _LAST_USED_RESOLUTION:
            async with self._work.writer.transaction() as session:
                await session.execute(
                    update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
                )
        return principal

    async def resolve_session(self, cookie: str) -> tuple[WebSession, Principal | None] | None:
        """The live session behind a cookie and, once signed in fully, its principal."""
        async with self._sessions() as session:
            found = await self.find_session(session, cookie)
            if found is None:
                return None
            row, user = found
            if not row.mfa_verified:
                return row, None  # half-way through sign-in: no permissions yet
            return row, await self.principal(session, user, via="session")

    async def sign_in(
        self, actor: Actor, username: str, password: str, *, previous: str | None = None
    ) -> str:
        """Check the password and open a half-signed-in session; return its cookie.

        A refusal commits the failure count with its ``denied`` event, which keeps the
        username tried in its sealed details (it may be a mistyped password), then
        raises ``InvalidCredentials`` or ``AccountLocked``."""
        action = "identity.session.start"
        refusal: IdentityError | None = None
        async with self._work.writer.transaction() as session:
            try:
                user = await self._check_password(session, username, password)
            except IdentityError as exc:
                refusal = exc
                reason = _sign_in_reason(exc, "bad credentials")
                tried = await self.user_by_name(session, username)
                now = self._clock.now()
                if reason != "locked" and tried and tried.locked_until and tried.locked_until > now:
                    # This attempt is the one that locked the user out.
                    reason += f"; locked until {tried.locked_until.isoformat()}"
                # The user a known username names is the target; what was typed
                # stays sealed.
                await self._audit.record_in(
                    session,
                    actor.entry(
                        action,
                        outcome="denied",
                        target=f"user:{tried.id}" if tried else None,
                        reason=reason,
                        details={"username": username[:200]},
                    ),
                )
            else:
                if previous:
                    await self._end_session(session, previous)
                cookie, _ = await self._start_session(session, user, mfa_verified=False)
                await self._audit.record_in(
                    session,
                    dataclasses.replace(actor, id=user.id, name=user.username).entry(
                        action, target=f"user:{user.id}", reason="password"
                    ),
                )
        if refusal is not None:
            raise refusal
        return cookie

    async def second_factor(self, actor: Actor, pending: WebSession) -> str | TotpEnrolment | None:
        """What a half-signed-in session needs next: a user whose roles need no TOTP is
        signed in (the new cookie is returned); one not yet enrolled gets their
        enrolment (started here, ``identity.totp.begin``); else ``None``: a code.
        Raise ``InvalidCredentials`` if the sign-in has ended."""
        async with self._sessions() as session:
            user = await session.get(User, pending.user_id)
            if user is None:
                raise InvalidCredentials(_ENDED)
            needs = await self.needs_mfa(session, user)
        if not needs:
            return await self.finish_sign_in(actor, pending, None)
        if user.mfa_enrolled_at is not None:
            return None
        who = dataclasses.replace(actor, id=user.id, name=user.username)
        async with self._work.change(
            who, "identity.totp.begin", target=f"user:{user.id}"
        ) as session:
            user = await self.find_user(session, user.id, lock=True)
            started = user.totp_secret_sealed is None
            enrolment = await self._totp_enrolment(session, user)
            if started:
                await self._audit.record_in(
                    session, who.entry("identity.totp.begin", target=f"user:{user.id}")
                )
        return enrolment

    async def enrolment_of(self, pending: WebSession) -> TotpEnrolment | None:
        """The unconfirmed enrolment of a half-signed-in user, if there is one."""
        async with self._sessions() as session:
            user = await session.get(User, pending.user_id)
            if user is None or user.totp_secret_sealed is None or user.mfa_enrolled_at:
                return None
            secret = await self._totp_secret(session, user)
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=self._issuer)
        return TotpEnrolment(secret, uri)

    async def finish_sign_in(self, actor: Actor, pending: WebSession, code: str | None) -> str:
        """Complete a sign-in with the TOTP code its roles need (``identity.session.complete``;
        the first good code also confirms the enrolment, ``identity.totp.confirm``).

        A refusal commits the failure count with its ``denied`` event, then raises
        ``InvalidCredentials``, ``AccountLocked`` or ``MfaRequired``."""
        action = "identity.session.complete"
        refusal: IdentityError | None = None
        async with self._work.writer.transaction() as session:
            user = await session.get(User, pending.user_id)
            who = (
                actor
                if user is None
                else dataclasses.replace(actor, id=user.id, name=user.username)
            )
            target = f"user:{pending.user_id}"
            enrolled = user is not None and user.mfa_enrolled_at is not None
            try:
                cookie, _ = await self._complete_sign_in(session, pending, code)
            except IdentityError as exc:
                refusal = exc
                await self._audit.record_in(
                    session,
                    who.entry(
                        action,
                        outcome="denied",
                        target=target,
                        reason=_sign_in_reason(
                            exc, "sign-in ended" if str(exc) == _ENDED else "MFA failed"
                        ),
                    ),
                )
            else:
                if not enrolled and user is not None and user.mfa_enrolled_at is not None:
                    await self._audit.record_in(
                        session, who.entry("identity.totp.confirm", target=target)
                    )
                await self._audit.record_in(session, who.entry(action, target=target))
        if refusal is not None:
            raise refusal
        return cookie

    async def sign_out(self, actor: Actor, cookie: str) -> None:
        """End a console session (``identity.session.end``)."""
        async with self._work.writer.transaction() as session:
            row = await session.get(WebSession, _sha256(cookie))
            await self._end_session(session, cookie)
            target = f"user:{row.user_id}" if row is not None else None
            await self._audit.record_in(session, actor.entry("identity.session.end", target=target))


class ApprovalService:
    """Maker-checker: a request is decided by a different user with the permission."""

    def __init__(self, clock: Clock, *, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._clock = clock
        self._sessions = sessions

    async def pending_list(self, kind: str | None = None) -> list[Approval]:
        """Requests still waiting for a decision, oldest first."""
        async with self._sessions() as session:
            return await self.pending(session, kind)

    async def _request(
        self,
        session: AsyncSession,
        *,
        kind: str,
        permission: Permission,
        payload: dict[str, Any],
        requested_by: str,
        account_id: str | None = None,
    ) -> Approval:
        """Open a pending request for someone else to decide."""
        approval = Approval(
            kind=kind,
            permission=permission.value,
            account_id=account_id,
            payload=json.dumps(payload, sort_keys=True),
            status="pending",
            requested_by=requested_by,
            requested_at=self._clock.now(),
        )
        session.add(approval)
        await session.flush()
        return approval

    async def _decide(
        self,
        session: AsyncSession,
        approval_id: int,
        decider: Principal,
        *,
        approve: bool,
        reason: str | None = None,
    ) -> Approval:
        """Approve or reject; refuse self-approval and deciders without the permission."""
        approval = await session.get(Approval, approval_id, with_for_update=True)
        if approval is None:
            raise IdentityConflict("no such approval")
        if approval.status != "pending":
            raise IdentityConflict(f"approval {approval_id} is already {approval.status}")
        if decider.user_id == approval.requested_by:
            raise NotPermitted("a request must be decided by someone other than its maker")
        if not decider.allows(Permission(approval.permission), approval.account_id):
            raise NotPermitted(f"deciding needs {approval.permission}")
        approval.status = "approved" if approve else "rejected"
        approval.decided_by = decider.user_id
        approval.decided_at = self._clock.now()
        approval.reason = (reason or "")[:1000] or None
        await session.flush()
        return approval

    async def pending(self, session: AsyncSession, kind: str | None = None) -> list[Approval]:
        """Requests still waiting for a decision, oldest first."""
        query = select(Approval).where(Approval.status == "pending")
        if kind:
            query = query.where(Approval.kind == kind)
        return list(await session.scalars(query.order_by(Approval.requested_at)))

    @staticmethod
    def payload(approval: Approval) -> dict[str, Any]:
        """The request's parameters."""
        value: dict[str, Any] = json.loads(approval.payload)
        return value


def _grant_target(result: Grant | Approval, user_id: str, role: Role) -> str:
    kind = "grant" if isinstance(result, Grant) else "approval"
    return f"{kind}:{result.id} user:{user_id} role:{role.value}"


class GrantService:
    """Grants roles, through a second person's approval for sensitive ones.

    Each method is one unit of work: ``identity.grant.apply`` when a role is given at
    once, ``identity.grant.request`` when it waits for a second person,
    ``identity.grant.approve`` / ``identity.grant.reject`` and ``identity.grant.revoke``.
    """

    def __init__(
        self,
        identity: IdentityService,
        approvals: ApprovalService,
        *,
        writer: Writer,
        audit: AuditLog,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self._identity = identity
        self._approvals = approvals
        self._work = _UnitOfWork(writer, audit)
        self._audit = audit
        self._sessions = sessions

    async def account_scopes(self) -> list[str]:
        """The business accounts a grant can be limited to, oldest first."""
        async with self._sessions() as session:
            return list(await session.scalars(select(Account.id).order_by(Account.created_at)))

    async def _record(
        self,
        session: AsyncSession,
        actor: Actor,
        result: Grant | Approval,
        user_id: str,
        role: Role,
        account_id: str | None,
    ) -> None:
        action = "identity.grant.apply" if isinstance(result, Grant) else "identity.grant.request"
        await self._audit.record_in(
            session,
            actor.entry(
                action,
                target=_grant_target(result, user_id, role),
                scope=account_id or "all accounts",
            ),
        )

    @staticmethod
    async def _check_account(session: AsyncSession, account_id: str | None) -> None:
        if account_id is not None and await session.get(Account, account_id) is None:
            raise AccountNotFound(f"no account {account_id}")

    async def request(
        self,
        actor: Actor,
        requester: Principal,
        user: str,
        role: Role,
        account_id: str | None,
    ) -> Grant | Approval:
        """Grant at once, or open an approval when ``role`` carries a sensitive permission
        (whoever it is for, the requester included)."""
        async with self._work.change(
            actor, "identity.grant.request", target=f"user:{user} role:{role.value}"
        ) as session:
            if not requester.allows(Permission.USERS_MANAGE):
                raise NotPermitted("granting roles needs users.manage")
            found = await self._identity.find_user(session, user, lock=True)
            return await self._grant_or_ask(
                session, actor, found, role, account_id, role in SENSITIVE_ROLES, requester.user_id
            )

    async def grant_as_operator(
        self, actor: Actor, user: str, role: Role, account_id: str | None
    ) -> Grant | Approval:
        """Grant on behalf of the machine's operator (``actor`` names them in the
        trail): at once, so the first admin can be made; a sensitive role opens an
        approval instead once an admin exists to decide it."""
        async with self._work.change(
            actor, "identity.grant.request", target=f"user:{user} role:{role.value}"
        ) as session:
            found = await self._identity.find_user(session, user, lock=True)
            result = await self._as_operator(session, actor, found, role, account_id)
        return result

    async def add_user_as_operator(
        self,
        actor: Actor,
        username: str,
        password: str,
        role: Role | None = None,
        account_id: str | None = None,
    ) -> tuple[User, Grant | Approval | None]:
        """Create a user and, with ``role``, grant it as the operator, in one unit of work."""
        # A username is chosen by an administrator, not typed at sign-in, so a
        # refused creation names it in the clear.
        async with self._work.change(
            actor, "identity.user.create", target=f"username:{username[:200]}"
        ) as session:
            user = await self._identity._create_user(
                session, username, password, created_by=actor.id
            )
            result = None
            if role is not None:
                result = await self._as_operator(session, actor, user, role, account_id)
            await self._audit.record_in(
                session, actor.entry("identity.user.create", target=f"user:{user.id}")
            )
        return user, result

    async def _as_operator(
        self,
        session: AsyncSession,
        actor: Actor,
        user: User,
        role: Role,
        account_id: str | None,
    ) -> Grant | Approval:
        ask = role in SENSITIVE_ROLES and await self._identity.admin_exists(session)
        return await self._grant_or_ask(session, actor, user, role, account_id, ask, actor.id)

    async def _grant_or_ask(
        self,
        session: AsyncSession,
        actor: Actor,
        user: User,
        role: Role,
        account_id: str | None,
        ask: bool,
        by: str,
    ) -> Grant | Approval:
        """Grant ``role`` now, or with ``ask`` open an approval for it; recorded either way."""
        await self._check_account(session, account_id)
        result: Grant | Approval
        if ask:
            result = await self._approvals._request(
                session,
                kind="grant",
                permission=Permission.GRANTS_APPROVE,
                payload={"user_id": user.id, "role": role.value, "account_id": account_id},
                requested_by=by,
            )
        else:
            result = await self._identity._apply_grant(
                session, user, role, account_id, granted_by=by
            )
        await self._record(session, actor, result, user.id, role, account_id)
        return result

    async def decide(
        self,
        actor: Actor,
        decider: Principal,
        approval_id: int,
        *,
        approve: bool,
        reason: str | None = None,
    ) -> Approval:
        """Decide a pending grant; apply it when approved. Neither its maker nor the
        user it is for can decide it."""
        action = "identity.grant.approve" if approve else "identity.grant.reject"
        async with self._work.change(actor, action, target=f"approval:{approval_id}") as session:
            pending = await session.get(Approval, approval_id)
            if pending is not None and pending.kind != "grant":
                raise IdentityConflict(f"approval {approval_id} is not a grant")
            if (
                pending is not None
                and ApprovalService.payload(pending)["user_id"] == decider.user_id
            ):
                raise NotPermitted("a grant must be decided by someone other than its grantee")
            approval = await self._approvals._decide(
                session, approval_id, decider, approve=approve, reason=reason
            )
            request = ApprovalService.payload(approval)
            target = f"approval:{approval.id} kind:{approval.kind} maker:{approval.requested_by}"
            if approve:
                user = await session.get(User, request["user_id"])
                if user is None:
                    raise IdentityConflict("the user of this grant no longer exists")
                grant = await self._identity._apply_grant(
                    session,
                    user,
                    Role(request["role"]),
                    request["account_id"],
                    granted_by=approval.requested_by,
                    approval_id=approval.id,
                )
                target += f" grant:{grant.id}"
            await self._audit.record_in(
                session,
                actor.entry(
                    action,
                    target=target,
                    scope=request["account_id"] or "all accounts",
                    reason=approval.reason,
                ),
            )
        return approval

    async def revoke(self, actor: Actor, user: str, role: Role, account_id: str | None) -> int:
        """Revoke the user's matching grants (no second person needed); return how many.
        Revoking what the user does not hold is recorded as refused."""
        action = "identity.grant.revoke"
        async with self._work.change(
            actor, action, target=f"user:{user} role:{role.value}"
        ) as session:
            found = await self._identity.find_user(session, user, lock=True)
            count = await self._identity._revoke_grant(session, found, role, account_id)
            await self._audit.record_in(
                session,
                actor.entry(
                    action,
                    outcome="ok" if count else "denied",
                    target=f"user:{found.id} role:{role.value}",
                    scope=account_id or "all accounts",
                    reason=None if count else "no such grant is held",
                ),
            )
        return count
