"""A populated archive for the outbox benchmarks, on SQLite or a fresh PostgreSQL
database: business numbers, agents, contacts with consent and (some) open
customer service windows, approved templates, a lexicon, and queued items.

Built through the services as the application opens them. Two shortcuts keep
the set-up short, and neither is measured: lexicon terms are added in one
transaction (``Lexicon._add``, without the per-term audit event), and queued
items are made by the outbox's own queueing step (``Outbox._queue``) in
transactions of a thousand, without deciding each at once as ``submit`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import phonenumbers
from phonenumbers import PhoneNumberType
from sqlalchemy import update

from api.bootstrap import Services, migrate_database, open_services
from api.cli.operator import CLI
from api.settings import load_settings
from archiver.audit.services import Actor
from archiver.core.clock import Clock
from archiver.core.subjects import contact_subject
from archiver.identity.services import Role
from archiver.vault.services import SealRequest
from archiver.whatsapp.items import Identity
from policy.consent import ConsentAction, ConsentMethod, NewConsent
from policy.decision import Category, ContentKind, Source
from policy.models import MessageTemplate, OutboxEvent, OutboxItem
from policy.outbox import MessageContent, SealedContent, SendRequest
from tests.bench.decide import lexicon_terms
from tests.bench.search import english, japanese
from tests.conftest import _pg_execute, _pg_url

MAKER = Actor(id="bench-maker")
CHECKER = Actor(id="bench-checker")
# Recipients' regions (their mobile numbers have one zone each), and those that
# may be at night now: one of them is, at any hour the benchmark runs.
REGIONS = ("JP", "GB", "IN")
NIGHT_ZONES = {  # regions whose mobile numbers have one zone, around the globe
    "IS": "Atlantic/Reykjavik",
    "DE": "Europe/Berlin",
    "EG": "Africa/Cairo",
    "KE": "Africa/Nairobi",
    "AE": "Asia/Dubai",
    "PK": "Asia/Karachi",
    "BD": "Asia/Dhaka",
    "TH": "Asia/Bangkok",
    "SG": "Asia/Singapore",
    "JP": "Asia/Tokyo",
    "FJ": "Pacific/Fiji",
    "CR": "America/Costa_Rica",
    "CO": "America/Bogota",
    "AR": "America/Argentina/Buenos_Aires",
}


@dataclass
class Contact:
    wa_id: str
    contact_id: str
    region: str
    window: set[str] = field(default_factory=set)  # accounts it wrote to within 24 h


@dataclass
class World:
    services: Services
    accounts: list[str]  # account ids
    phone_numbers: dict[str, str]  # account id -> phone_number_id
    app_secret: str
    access_token: str
    agents: dict[str, str]  # account id -> agent user id
    contacts: list[Contact]
    night: list[Contact]  # recipients where it is night now
    templates: dict[str, int]  # account id -> an approved utility template's id
    terms: int
    database: str


def day_regions(now: datetime) -> list[str]:
    """Regions where it is between 09:00 and 20:00 now (no quiet hours, with margin)."""
    return [r for r, z in NIGHT_ZONES.items() if 9 <= now.astimezone(ZoneInfo(z)).hour < 20]


def night_region(now: datetime) -> str:
    """A region where it is between 23:00 and 06:00 now (quiet hours, with margin)."""
    for region, zone in NIGHT_ZONES.items():
        hour = now.astimezone(ZoneInfo(zone)).hour
        if hour >= 23 or hour < 6:
            return region
    raise RuntimeError("no night region found")  # the offsets leave no 7-hour gap


def _number(rng: random.Random, region: str, used: set[str]) -> str:
    """A valid mobile number of ``region`` (its example number, other last digits)."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    assert example is not None
    digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
    while True:
        wa = digits[:-4] + f"{rng.randrange(10_000):04d}"
        parsed = phonenumbers.parse("+" + wa)
        if wa not in used and phonenumbers.is_valid_number(parsed):
            used.add(wa)
            return wa


@asynccontextmanager
async def world(
    database: str,
    *,
    accounts: int,
    contacts: int,
    terms: int,
    seed: int = 17,
    clock: Clock | None = None,
    night: int = 0,
    window_share: float = 0.6,
    regions: Sequence[str] = REGIONS,
    access_token: str | None = None,
    graph_base_url: str | None = None,
) -> AsyncIterator[World]:
    """A fresh archive (``database``: ``sqlite`` or ``postgresql``), removed on exit."""
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="sr-bench-outbox-"))
    env = {"STRONGROOM_DATA_DIR": str(workdir / "data")}
    if graph_base_url is not None:
        env["STRONGROOM_GRAPH_BASE_URL"] = graph_base_url
    pg = f"sr_bench_outbox_{secrets.token_hex(4)}" if database == "postgresql" else None
    if pg:
        await _pg_execute(f"CREATE DATABASE {pg}")
        env["STRONGROOM_DATABASE_URL"] = _pg_url(pg)
    settings = load_settings(env)
    try:
        (workdir / "data").mkdir(mode=0o700)
        await asyncio.to_thread(migrate_database, settings)
        services = await open_services(settings, clock)
        try:
            yield await _populate(
                services,
                rng,
                accounts,
                contacts,
                terms,
                night,
                window_share,
                database,
                regions,
                access_token or "EAAB" + secrets.token_urlsafe(24),
            )
        finally:
            await services.close()
    finally:
        if pg:
            await _pg_execute(f"DROP DATABASE IF EXISTS {pg} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)


async def _populate(
    services: Services,
    rng: random.Random,
    n_accounts: int,
    n_contacts: int,
    n_terms: int,
    n_night: int,
    window_share: float,
    database: str,
    regions: Sequence[str],
    access_token: str,
) -> World:
    app_secret = secrets.token_hex(16)
    accounts: list[str] = []
    phone_numbers: dict[str, str] = {}
    waba = "1022901293" + "".join(rng.choice("0123456789") for _ in range(5))
    for i in range(n_accounts):
        pnid = f"10654035224{i:04d}"
        row = await services.accounts.register(
            CLI,
            phone_number_id=pnid,
            display_phone_number=f"+1 415 555 01{i:02d}",
            app_secret=app_secret,
            verify_token=secrets.token_urlsafe(12),
            access_token=access_token,
            waba_id=waba,
        )
        accounts.append(row.id)
        phone_numbers[row.id] = pnid
    agents = {}
    for account_id in accounts:
        user, _ = await services.grants.add_user_as_operator(
            CLI, f"agent-{account_id[-6:]}", secrets.token_urlsafe(16), Role.AGENT, account_id
        )
        agents[account_id] = user.id

    used: set[str] = set()
    people: list[Contact] = []
    now = services.clock.now()
    async with services.writer.transaction() as session:
        for c in range(n_contacts):
            region = regions[c % len(regions)]
            wa = _number(rng, region, used)
            contact_id = await services.capture.resolve_contact(session, [Identity("wa_id", wa)])
            assert contact_id is not None
            people.append(Contact(wa, contact_id, region))
        night = night_region(now)
        night_people = []
        for _ in range(n_night):
            wa = _number(rng, night, used)
            contact_id = await services.capture.resolve_contact(session, [Identity("wa_id", wa)])
            assert contact_id is not None
            night_people.append(Contact(wa, contact_id, night))
        entries = []
        for person in people + night_people:
            for category in (Category.MARKETING, Category.UTILITY):
                roll = rng.random()
                if roll < 0.8 or person in night_people:
                    entries.append(
                        NewConsent(
                            person.contact_id,
                            None,
                            category,
                            ConsentAction.OPT_IN,
                            ConsentMethod.WEB_FORM,
                            "Ticked the WhatsApp box on the account form",
                            now - timedelta(days=rng.randint(1, 300)),
                        )
                    )
                elif roll < 0.9:
                    entries.append(
                        NewConsent(
                            person.contact_id,
                            None,
                            category,
                            ConsentAction.OPT_OUT,
                            ConsentMethod.CHAT_KEYWORD,
                            "STOP",
                            now - timedelta(days=rng.randint(0, 30)),
                        )
                    )
        await services.consent.record_in(session, "bench", entries)
        for term, action in [(t, a) for _, t, a in lexicon_terms(rng, n_terms)]:
            await services.lexicon._add(session, term, action, "bench")

    templates = {}
    for n, account_id in enumerate(accounts):
        for language in ("en_US", "ja"):
            row = await services.templates.create(
                MAKER,
                None,
                account_id,
                name=f"order_update_{n}",
                language=language,
                category="utility",
                components=[{"type": "BODY", "text": "{{1}}: order {{2}} is on its way."}],
                parameters=[{"name": "1", "type": "text"}, {"name": "2", "type": "number"}],
            )
            await services.templates.submit(MAKER, None, row.id)
            await services.templates.approve(CHECKER, None, row.id, "checked")
            if language == "en_US":
                templates[account_id] = row.id
    async with services.writer.transaction() as session:
        # Meta's approval, as its template status webhook would set it.
        await session.execute(update(MessageTemplate).values(meta_status="APPROVED"))

    # Inbound messages, through capture's real signed webhook path, open windows.
    senders = [p for p in people if rng.random() < window_share]
    for account_id in accounts:
        chosen = senders
        for chunk in range(0, len(chosen), 100):
            part = chosen[chunk : chunk + 100]
            body = _inbound(phone_numbers[account_id], part, now - timedelta(minutes=30))
            sig = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
            await services.capture.journal(account_id, body, sig)
            for person in part:
                person.window.add(account_id)
    while await services.capture.project_pending():
        pass
    return World(
        services,
        accounts,
        phone_numbers,
        app_secret,
        access_token,
        agents,
        people,
        night_people,
        templates,
        n_terms,
        database,
    )


def _inbound(phone_number_id: str, people: Sequence[Contact], at: datetime) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "14155550100", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Customer"}, "wa_id": p.wa_id} for p in people],
        "messages": [
            {
                "from": p.wa_id,
                "id": f"wamid.bench{secrets.token_hex(12)}",
                "timestamp": str(int(at.timestamp())),
                "type": "text",
                "text": {"body": "Hello, a question about my order"},
            }
            for p in people
        ],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def text_request(account_id: str, to: str, text: str, key: str) -> SendRequest:
    return SendRequest(
        account_id=account_id,
        to="+" + to,
        content=MessageContent(kind=ContentKind.TEXT, text=text),
        idempotency_key=key,
        source=Source.AGENT,
    )


def template_request(account_id: str, to: str, order: int, key: str) -> SendRequest:
    return SendRequest(
        account_id=account_id,
        to="+" + to,
        content=MessageContent(
            kind=ContentKind.TEMPLATE,
            template=f"order_update_{account_id_index(account_id)}",
            language="en_US",
            variables={"1": "Customer", "2": str(order)},
        ),
        idempotency_key=key,
        source=Source.CAMPAIGN,
    )


_INDEX: dict[str, int] = {}


def account_id_index(account_id: str) -> int:
    return _INDEX[account_id]


def mixed_requests(w: World, rng: random.Random, count: int) -> list[tuple[str, SendRequest]]:
    """``count`` (sender, request) pairs: half Japanese, free-form and templates."""
    for n, account_id in enumerate(w.accounts):
        _INDEX[account_id] = n
    out = []
    for i in range(count):
        account_id = w.accounts[i % len(w.accounts)]
        person = rng.choice(w.contacts)
        key = f"bench-{i}"
        if rng.random() < 0.3:
            request = template_request(account_id, person.wa_id, 10_000 + i, key)
        else:
            text = japanese(rng, []) if person.region == "JP" else english(rng, [])
            request = text_request(account_id, person.wa_id, text, key)
        out.append((w.agents[account_id], request))
    return out


async def queue(w: World, requests: Sequence[tuple[str, SendRequest]], chunk: int = 1000) -> float:
    """Queue ``requests`` without deciding them, as ``Outbox._queue`` does but with
    one vault batch per ``chunk`` (the files are written in parallel); the seconds
    it took."""
    started = time.perf_counter()
    services = w.services
    outbox = services.outbox
    retain = timedelta(days=services.settings.record_retention_days)
    for start in range(0, len(requests), chunk):
        async with services.writer.transaction() as session:
            now = services.clock.now()
            prepared = []
            for sender, request in requests[start : start + chunk]:
                item = await outbox._prepare(session, sender, request)
                assert not isinstance(item, OutboxItem), "an idempotency key was reused"
                prepared.append(item)
            sealed = await services.vault.seal_many(
                session,
                [
                    SealRequest(
                        kind="outbox",
                        subject=contact_subject(p.contact_id),
                        plaintext=msgspec.json.encode(SealedContent(p.to, p.request.content)),
                        retain_until=now + retain,
                    )
                    for p in prepared
                ],
            )
            rows = [p.row(o.id, now) for p, o in zip(prepared, sealed, strict=True)]
            session.add_all(rows)
            await session.flush()
            session.add_all(
                OutboxEvent(item_id=r.id, to_state="queued", actor=CLI.id, at=now) for r in rows
            )
    return time.perf_counter() - started


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_json(value: Any) -> str:
    return json.dumps(value, default=str)
