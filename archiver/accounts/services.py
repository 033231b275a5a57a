"""Business accounts: the phone numbers captured and their Meta app secrets.

Secrets are sealed in the database under the account's subject key; the verify
token is kept only as a SHA-256 digest; the display number as a blind token
and a sealed copy. Registering one is a unit of work: the account and its
``account.register`` audit event commit together; a refusal is audited as denied.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.errors import AccountExists, AccountNotFound, InvalidInput
from archiver.core.subjects import account_subject
from archiver.crypto import envelope
from archiver.crypto.keyring import Keyring
from archiver.search.blind_index import BlindIndex, normalize_phone


@dataclass(frozen=True, slots=True)
class AccountSecrets:
    """An account's secrets, decrypted, for verifying and fetching."""

    account_id: str
    phone_number_id: str
    app_secret: bytes
    access_token: str | None


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account as it is shown: never its secrets."""

    id: str
    phone_number_id: str
    display_phone_number: str
    waba_id: str | None
    created_at: datetime


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AccountService:
    """Adds accounts and hands out their secrets to capture and media fetch."""

    def __init__(
        self,
        keyring: Keyring,
        index: BlindIndex,
        clock: Clock,
        *,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
    ) -> None:
        self._keyring = keyring
        self._index = index
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    def on_register(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener`` after each account registered (capture reloads its secrets)."""
        self._listeners.append(listener)

    async def register(
        self,
        actor: Actor,
        *,
        phone_number_id: str,
        display_phone_number: str,
        app_secret: str,
        verify_token: str,
        access_token: str | None = None,
        waba_id: str | None = None,
    ) -> AccountView:
        """Register a phone number, audited as ``account.register`` in the same
        transaction; raise ``AccountExists`` or ``InvalidInput``, audited as denied."""
        try:
            async with self._writer.transaction() as session:
                account = await self._add(
                    session,
                    phone_number_id=phone_number_id,
                    display_phone_number=display_phone_number,
                    app_secret=app_secret,
                    verify_token=verify_token,
                    access_token=access_token,
                    waba_id=waba_id,
                )
                number = await self.display_phone_number(session, account)
                await self._audit.record_in(
                    session,
                    actor.entry(
                        "account.register",
                        target=f"account:{account.id}",
                        details={
                            "phone_number_id": phone_number_id,
                            "display_phone_number": number,
                        },
                    ),
                )
        except (AccountExists, InvalidInput) as exc:
            await self._audit.record_durable(
                actor.entry(
                    "account.register",
                    outcome="denied",
                    target=f"account:phone_number_id={phone_number_id}"[:300],
                    reason=str(exc),
                    details={"display_phone_number": display_phone_number},
                )
            )
            raise
        for listener in self._listeners:
            await listener()
        return AccountView(account.id, phone_number_id, number, waba_id, account.created_at)

    async def listed(self, accounts: set[str] | frozenset[str] | None) -> list[AccountView]:
        """The accounts among ``accounts`` (``None``: every one), oldest first."""
        async with self._sessions() as session:
            return [
                AccountView(
                    a.id,
                    a.phone_number_id,
                    await self.display_phone_number(session, a),
                    a.waba_id,
                    a.created_at,
                )
                for a in await self.all(session)
                if accounts is None or a.id in accounts
            ]

    async def exists(self, account_id: str) -> bool:
        """Whether ``account_id`` is registered."""
        async with self._sessions() as session:
            return await session.get(Account, account_id) is not None

    async def _add(
        self,
        session: AsyncSession,
        *,
        phone_number_id: str,
        display_phone_number: str,
        app_secret: str,
        verify_token: str,
        access_token: str | None = None,
        waba_id: str | None = None,
    ) -> Account:
        """Add a phone number inside ``register``'s transaction; raise
        ``AccountExists`` or ``InvalidInput``."""
        if not phone_number_id.isdigit():
            raise InvalidInput("phone_number_id must be Meta's numeric id")
        if not app_secret.strip():
            raise InvalidInput("app secret must not be empty")
        if len(verify_token) < 8:
            raise InvalidInput("verify token must be at least 8 characters")
        number = display_phone_number.strip()
        # Meta's dashboards and payloads show the number without "+".
        e164 = normalize_phone(number if number.startswith("+") else "+" + number)
        account_id = "acc_" + secrets.token_hex(8)
        key_id, key = await self._keyring.key_for(session, account_subject(account_id))

        def seal(label: str, value: str) -> bytes:
            return envelope.seal(key, key_id, f"{account_id}/{label}", value.encode("utf-8"))

        account = Account(
            id=account_id,
            phone_number_id=phone_number_id,
            waba_id=waba_id,
            display_phone_token=self._index.contact_token(e164),
            display_phone_sealed=seal("display_phone_number", e164),
            app_secret_sealed=seal("app_secret", app_secret),
            verify_token_sha256=_sha256(verify_token),
            access_token_sealed=seal("access_token", access_token) if access_token else None,
            created_at=self._clock.now(),
        )
        try:
            async with session.begin_nested():
                session.add(account)
        except DBIntegrityError:
            raise AccountExists(
                f"phone number id {phone_number_id} is already registered"
            ) from None
        return account

    async def all(self, session: AsyncSession) -> list[Account]:
        """Every account, oldest first."""
        return list(await session.scalars(select(Account).order_by(Account.created_at)))

    async def get(self, session: AsyncSession, account_id: str) -> Account:
        """One account; raise ``AccountNotFound``."""
        account = await session.get(Account, account_id)
        if account is None:
            raise AccountNotFound(f"no account {account_id}")
        return account

    async def display_phone_number(self, session: AsyncSession, account: Account) -> str:
        """The account's display number (E.164), decrypted."""
        return await self._open(
            session, account, "display_phone_number", account.display_phone_sealed
        )

    async def secrets(self, session: AsyncSession) -> list[AccountSecrets]:
        """Every account's decrypted secrets, for signature checks and downloads."""
        out = []
        for account in await self.all(session):
            token = None
            if account.access_token_sealed is not None:
                token = await self._open(
                    session, account, "access_token", account.access_token_sealed
                )
            app_secret = await self._open(session, account, "app_secret", account.app_secret_sealed)
            out.append(
                AccountSecrets(account.id, account.phone_number_id, app_secret.encode(), token)
            )
        return out

    async def match_verify_token(self, token: str) -> bool:
        """True if ``token`` is the verify token of some account (constant time)."""
        digest = _sha256(token)
        found = False
        async with self._sessions() as session:
            for stored in await session.scalars(select(Account.verify_token_sha256)):
                found |= hmac.compare_digest(stored, digest)
        return found

    async def _open(
        self, session: AsyncSession, account: Account, label: str, sealed: bytes
    ) -> str:
        key = await self._keyring.key_by_id(session, envelope.read_header(sealed).key_id)
        return envelope.open_(key, f"{account.id}/{label}", sealed).decode("utf-8")
