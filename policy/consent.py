"""The consent ledger: who opted in to or out of which category, when, how and why.

Append-only. Each entry is sealed whole (who recorded it, when, how, the
evidence text, the source record, the category and the action) as a vault
object under the contact's subject key, so erasing the contact erases its
evidence; the row keeps only what the send rules query, none of it personal.
A phone number is never stored: it names its contact through capture's blind
identity tokens (:class:`~policy.interfaces.ContactResolver`).

Each entry commits with its ``consent.record`` audit event (the evidence sealed
in the event's details); a refused entry is recorded as ``denied`` once nothing
changed. Reading the evidence back is audited durably before anything is decrypted.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import msgspec
from sqlalchemy import ColumnElement, String, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from archiver.accounts.models import Account
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.errors import InvalidInput
from archiver.core.subjects import contact_subject
from archiver.records.models import Contact
from archiver.search.blind_index import normalize_phone
from archiver.vault.models import SealedObject
from archiver.vault.services import SealRequest, Vault
from archiver.whatsapp.items import Identity
from policy.decision import Category, ConsentState
from policy.errors import (
    ConsentAlreadyRecorded,
    ConsentError,
    ContactNotFound,
    InvalidConsent,
)
from policy.interfaces import ContactResolver
from policy.models import ConsentEntry

MAX_EVIDENCE_CHARS = 10_000
E = TypeVar("E", bound=StrEnum)
Accounts = Collection[str] | None
"""The accounts a caller may read: ``None`` for every account."""


class ConsentAction(StrEnum):
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"


class ConsentMethod(StrEnum):
    """How consent was given or withdrawn."""

    WEB_FORM = "web_form"
    CHAT_KEYWORD = "chat_keyword"  # a stop or resume word in a message
    CRM_IMPORT = "crm_import"
    AGENT_ATTESTATION = "agent_attestation"
    WEBHOOK = "webhook"  # the user_preferences webhook
    DELIVERY_ERROR = "delivery_error"  # a failed status with error 131050


_HOW: dict[tuple[ConsentMethod, ConsentAction], str] = {
    (ConsentMethod.CHAT_KEYWORD, ConsentAction.OPT_OUT): "by replying with a stop word (STOP)",
    (ConsentMethod.CHAT_KEYWORD, ConsentAction.OPT_IN): "by replying with a resume word (START)",
    (ConsentMethod.WEBHOOK, ConsentAction.OPT_OUT): "through the WhatsApp marketing preference",
    (ConsentMethod.WEBHOOK, ConsentAction.OPT_IN): "through the WhatsApp marketing preference",
}
_HOW_BY_METHOD: dict[ConsentMethod, str] = {
    ConsentMethod.WEB_FORM: "by web form",
    ConsentMethod.CRM_IMPORT: "by an import of a CRM file",
    ConsentMethod.AGENT_ATTESTATION: "as attested by an agent",
    ConsentMethod.DELIVERY_ERROR: "as Meta reported on a delivery (error 131050)",
}


def how(method: str, action: str) -> str:
    """A short phrase saying how an entry came about ("by web form")."""
    try:
        kind, act = ConsentMethod(method), ConsentAction(action)
    except ValueError:
        return f"by {method}"
    return _HOW.get((kind, act)) or _HOW_BY_METHOD.get(kind) or f"by {method}"


@dataclass(frozen=True, slots=True)
class NewConsent:
    """One entry to record for a known contact (checked by :func:`checked`)."""

    contact_id: str
    account_id: str | None
    category: Category
    action: ConsentAction
    method: ConsentMethod
    evidence: str
    occurred_at: datetime
    source_record_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConsentView:
    """An entry read back, its evidence decrypted (``None`` once the contact's key
    was destroyed)."""

    id: int
    contact_id: str
    account_id: str | None
    category: str
    action: str
    method: str
    how: str
    recorded_by: str
    occurred_at: datetime
    recorded_at: datetime
    source_record_id: int | None
    evidence: str | None

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data (times in ISO 8601)."""
        return {
            "id": self.id,
            "contact_id": self.contact_id,
            "account_id": self.account_id,
            "category": self.category,
            "action": self.action,
            "method": self.method,
            "how": self.how,
            "recorded_by": self.recorded_by,
            "occurred_at": self.occurred_at.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
            "source_record_id": self.source_record_id,
            "evidence": self.evidence,
        }


def _enum(kind: type[E], value: str, what: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(v.value for v in kind)
        raise InvalidConsent(f"unknown {what} {value!r}: use one of {choices}") from None


def checked(
    contact_id: str,
    account_id: str | None,
    category: str,
    action: str,
    method: str,
    evidence: str,
    occurred_at: datetime,
    source_record_id: int | None = None,
) -> NewConsent:
    """A :class:`NewConsent` from plain values; raise ``InvalidConsent``."""
    evidence = evidence.strip()
    if not evidence:
        raise InvalidConsent("the evidence is empty: say what shows the consent")
    if len(evidence) > MAX_EVIDENCE_CHARS:
        raise InvalidConsent(f"the evidence is longer than {MAX_EVIDENCE_CHARS} characters")
    if occurred_at.tzinfo is None:
        raise InvalidConsent("occurred_at has no time zone")
    return NewConsent(
        contact_id=contact_id,
        account_id=account_id,
        category=_enum(Category, category, "category"),
        action=_enum(ConsentAction, action, "action"),
        method=_enum(ConsentMethod, method, "method"),
        evidence=evidence,
        occurred_at=occurred_at,
        source_record_id=source_record_id,
    )


def _target(contact_id: str, category: str) -> str:
    return f"contact:{contact_id} category:{category}"


_REASONS: dict[type[ConsentError], str] = {
    InvalidConsent: "invalid consent",
    ContactNotFound: "no such contact",
    ConsentAlreadyRecorded: "consent already recorded",
}


def ids_in(
    column: ColumnElement[str] | InstrumentedAttribute[str], values: Iterable[str], dialect: str
) -> ColumnElement[bool]:
    """``column IN (values)`` with the values as one JSON parameter, so that one
    statement serves any number of them (bound parameters are limited)."""
    payload = json.dumps(sorted(set(values)))
    if dialect == "postgresql":
        rows = text("SELECT jsonb_array_elements_text(CAST(:ids AS jsonb)) AS value")
    else:
        rows = text("SELECT value FROM json_each(:ids)")
    return column.in_(rows.bindparams(ids=payload).columns(value=String))


class ConsentLedger:
    """Records and reads the consent ledger; each entry audited with it."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
        vault: Vault,
        contacts: ContactResolver,
        *,
        retention: timedelta,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit
        self._vault = vault
        self._contacts = contacts
        self._retention = retention

    async def record(
        self,
        actor: Actor,
        account_id: str | None,
        *,
        category: str,
        action: str,
        method: str,
        evidence: str,
        occurred_at: datetime,
        phone: str | None = None,
        contact_id: str | None = None,
        source_record_id: int | None = None,
    ) -> ConsentEntry:
        """Record that the contact (by ``phone``, found or created, or by
        ``contact_id``) opted in or out of ``category``, audited as
        ``consent.record``. Raise ``InvalidConsent`` (a bad number, category,
        action, method or evidence), ``ContactNotFound`` or
        ``ConsentAlreadyRecorded``, each audited as denied."""
        target = _target(contact_id or "new", category)
        try:
            if (phone is None) == (contact_id is None):
                raise InvalidConsent("give either a phone number or a contact id")
            wa_id = _wa_id(phone) if phone is not None else None
            async with self._writer.transaction() as session:
                if account_id is not None and await session.get(Account, account_id) is None:
                    raise InvalidConsent(f"no account {account_id!r}")
                if wa_id is not None:
                    contact_id = await self._contacts.resolve_contact(
                        session, [Identity("wa_id", wa_id)]
                    )
                assert contact_id is not None
                target = _target(contact_id, category)
                if await session.get(Contact, contact_id) is None:
                    raise ContactNotFound(f"no contact {contact_id!r}")
                entry = checked(
                    contact_id,
                    account_id,
                    category,
                    action,
                    method,
                    evidence,
                    occurred_at,
                    source_record_id,
                )
                rows = await self.record_in(session, actor.id, [entry])
                if not rows:
                    raise ConsentAlreadyRecorded(
                        f"record {source_record_id} already gave {category} consent"
                    )
                await self.audit_in(session, actor, rows[0], entry.evidence)
        except ConsentError as exc:
            await self._audit.record_durable(
                actor.entry(
                    "consent.record",
                    outcome="denied",
                    target=target,
                    reason=_REASONS[type(exc)],
                    details={"error": str(exc), "evidence": evidence},
                )
            )
            raise
        return rows[0]

    async def record_in(
        self, session: AsyncSession, recorded_by: str, entries: Sequence[NewConsent]
    ) -> list[ConsentEntry]:
        """Seal and add ``entries`` in the caller's transaction; those whose
        ``(source record, category)`` already has an entry, in the ledger or
        earlier in ``entries``, are skipped. The new rows, in order (the caller
        audits each with :meth:`audit_in`)."""
        sources = {e.source_record_id for e in entries if e.source_record_id is not None}
        seen: set[tuple[int, str]] = set()
        if sources:
            query = select(ConsentEntry.source_record_id, ConsentEntry.category).where(
                ConsentEntry.source_record_id.in_(sources)
            )
            seen = {(int(s), c) for s, c in (await session.execute(query)).all() if s}
        fresh: list[NewConsent] = []
        for entry in entries:
            if entry.source_record_id is not None:
                key = (entry.source_record_id, entry.category.value)
                if key in seen:
                    continue
                seen.add(key)
            fresh.append(entry)
        if not fresh:
            return []
        now = self._clock.now()
        requests = [
            SealRequest(
                kind="consent",
                subject=contact_subject(entry.contact_id),
                plaintext=msgspec.json.encode(_sealed(entry, recorded_by, now)),
                retain_until=now + self._retention,
            )
            for entry in fresh
        ]
        objects = await self._vault.seal_many(session, requests)
        rows = [
            ConsentEntry(
                contact_id=entry.contact_id,
                account_id=entry.account_id,
                category=entry.category.value,
                action=entry.action.value,
                method=entry.method.value,
                recorded_by=recorded_by,
                occurred_at=entry.occurred_at,
                recorded_at=now,
                source_record_id=entry.source_record_id,
                object_id=obj.id,
            )
            for entry, obj in zip(fresh, objects, strict=True)
        ]
        session.add_all(rows)
        await session.flush()
        return rows

    async def audit_in(
        self, session: AsyncSession, actor: Actor, row: ConsentEntry, evidence: str
    ) -> None:
        """Append ``row``'s ``consent.record`` event in the caller's transaction;
        the evidence goes in the sealed details only."""
        await self._audit.record_in(
            session,
            actor.entry(
                "consent.record",
                target=_target(row.contact_id, row.category),
                scope=f"account:{row.account_id}" if row.account_id else None,
                reason=f"{row.action} by {row.method}",
                details={"entry": row.id, "evidence": evidence},
            ),
        )

    async def entries(self, actor: Actor, accounts: Accounts, contact_id: str) -> list[ConsentView]:
        """The contact's entries within ``accounts`` (``None``: every account, and
        only then the entries of no account), oldest first, decrypted once the
        read is durably in the audit trail (``consent.read``)."""
        return await self._read(actor, accounts, contact_id, "consent.read")

    async def export(
        self, actor: Actor, accounts: Accounts, contact_id: str
    ) -> list[dict[str, Any]]:
        """:meth:`entries` as JSON-ready data, audited as ``consent.export``."""
        views = await self._read(actor, accounts, contact_id, "consent.export")
        return [view.as_dict() for view in views]

    async def _read(
        self, actor: Actor, accounts: Accounts, contact_id: str, action: str
    ) -> list[ConsentView]:
        query = (
            select(ConsentEntry, SealedObject)
            .join(SealedObject, SealedObject.id == ConsentEntry.object_id)
            .where(ConsentEntry.contact_id == contact_id)
            .order_by(ConsentEntry.occurred_at, ConsentEntry.id)
        )
        if accounts is not None:
            query = query.where(ConsentEntry.account_id.in_(list(accounts)))
        async with self._sessions() as session:
            rows = [(r[0], r[1]) for r in await session.execute(query)]
            await self._audit.record_durable(
                actor.entry(action, target=f"contact:{contact_id}", reason=f"{len(rows)} entries")
            )
            opened = await self._vault.open_many(session, [obj for _, obj in rows])
        views = []
        for (row, _), plaintext in zip(rows, opened, strict=True):
            sealed = msgspec.json.decode(plaintext) if plaintext is not None else {}
            views.append(
                ConsentView(
                    id=row.id,
                    contact_id=row.contact_id,
                    account_id=row.account_id,
                    category=row.category,
                    action=row.action,
                    method=row.method,
                    how=how(row.method, row.action),
                    recorded_by=row.recorded_by,
                    occurred_at=row.occurred_at,
                    recorded_at=row.recorded_at,
                    source_record_id=row.source_record_id,
                    evidence=sealed.get("evidence") if plaintext is not None else None,
                )
            )
        return views

    @staticmethod
    async def latest(
        session: AsyncSession, contact_ids: Iterable[str]
    ) -> dict[tuple[str, Category], ConsentState]:
        """The latest opt-in and opt-out of each contact and category, in one query
        for any number of contacts (what the send rules read)."""
        wanted = set(contact_ids)
        if not wanted:
            return {}
        dialect = session.get_bind().dialect.name
        query = (
            select(
                ConsentEntry.contact_id,
                ConsentEntry.category,
                ConsentEntry.action,
                ConsentEntry.method,
                ConsentEntry.occurred_at,
            )
            .where(ids_in(ConsentEntry.contact_id, wanted, dialect))
            .order_by(ConsentEntry.occurred_at, ConsentEntry.id)
        )
        found: dict[tuple[str, Category], ConsentState] = {}
        for contact, category, action, method, at in (await session.execute(query)).all():
            key = (contact, Category(category))
            state = found.get(key, ConsentState())
            phrase = how(method, action)
            if action == ConsentAction.OPT_IN:
                state = ConsentState(at, phrase, state.opted_out_at, state.opted_out_how)
            else:
                state = ConsentState(state.opted_in_at, state.opted_in_how, at, phrase)
            found[key] = state
        return found


def _wa_id(phone: str) -> str:
    """``phone`` (international, its ``+`` optional as in a WhatsApp id) as a
    WhatsApp id (E.164 digits); raise ``InvalidConsent``."""
    phone = phone.strip()
    try:
        return normalize_phone(phone if phone.startswith("+") else "+" + phone).lstrip("+")
    except InvalidInput as exc:
        raise InvalidConsent(str(exc)) from None


def _sealed(entry: NewConsent, recorded_by: str, now: datetime) -> dict[str, Any]:
    return {
        "contact_id": entry.contact_id,
        "account_id": entry.account_id,
        "category": entry.category.value,
        "action": entry.action.value,
        "method": entry.method.value,
        "evidence": entry.evidence,
        "occurred_at": entry.occurred_at.isoformat(),
        "recorded_by": recorded_by,
        "recorded_at": now.isoformat(),
        "source_record_id": entry.source_record_id,
    }
