"""Search benchmark (issue 5): the blind index against plaintext SQLite FTS5, same corpus.

Run: ``make bench-search`` (1,000,000 messages), or for a short run
``python -m tests.bench.search --messages 20000``.

Builds an archive of synthetic WhatsApp messages (English and about 30%
Japanese, some emoji, Zipf-like word frequencies, planted needles) across
contacts and accounts, on the embedded default (SQLite and the file vault)
through the project's own code: accounts through the account service, contacts
through ``Capture.resolve_contact``, Cloud-API-shaped webhook values turned
into items by ``archiver.whatsapp.items.extract`` and written by ``Capture.store_items``,
so records, sealed objects and blind-index tokens are exactly what capture
writes. The same texts go into a plaintext SQLite FTS5 index (CJK split into
bigrams, as the blind index does) in a separate file. The build is cached in
the data directory and reused by later runs with the same parameters
(``--rebuild`` to force); a cache of an older schema is upgraded by the
migrations first.

Then it measures p50 and p95 latency of ``Search.search`` (first page of 50
verified hits with decrypted snippets, for a compliance officer who sees every
account) and of the equivalent FTS5 queries, interleaved run by run: a rare
term, a common English and a common Japanese term, two terms, a phrase, and a
contact plus a one-month date range. Times are in-process, at the library
level: no HTTP, no audit write, warm page cache (the text queries cycle through
a few terms, so they read the same sealed objects again; each contact range
reads its own). Printed: our figures, FTS5's, ratios to them, the issue's
targets (p95 <= 200 ms, within 2x of FTS5) marked met or NOT MET, and sizes on
disk against the corpus size.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from alembic.script import ScriptDirectory

from api.bootstrap import Services, migrate_database, open_services
from api.migrate import alembic_config, upgrade
from api.settings import Settings, load_settings
from archiver.audit.services import Actor
from archiver.search.blind_index import normalize
from archiver.search.services import Filters, SearchError
from archiver.whatsapp.items import Identity, Item, extract

TARGET_P95_MS = 200.0
TARGET_RATIO = 2.0
PAGE = 50
SEED = 5
# Bump when the generated corpus changes, so that old caches are rebuilt.
CORPUS_VERSION = 1
MARKER = "bench-search.json"  # written last: its presence means the build finished
BUILDING = "bench-search.building"  # written first: the directory is ours to wipe
FTS_FILE = "fts5-baseline.db"
END = datetime(2026, 11, 1, tzinfo=UTC)
SPAN = timedelta(days=730)

# -- the synthetic corpus ----------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


# Roughly in order of frequency in customer-service chat; drawn with Zipf weights.
EN_WORDS = list(
    dict.fromkeys(
        _words(
            """
    the to i you a and is for please my it of in on can this we be your have me that with
    at order account thanks will are not do if hi just what know need payment get how would
    like ok there was card could time today when any send our an so from about by up as help
    yes tomorrow all call back no check did but still one has here issue thank hello received
    been transfer more delivery should am also number morning sorry confirm statement they new
    want sure let see appointment week which where update price change now good great address
    bank money fee email day make form details problem information service refund invoice pay
    contact team monday friday open loan balance branch phone message reply asap afternoon
    office via cancel booking product charge deposit month soon store possible available
    manager receipt delayed documents wire signed copy online app login password reset limit
    credit debit rate interest mortgage insurance claim policy premium quote shipping tracking
    package courier parcel warehouse stock size color model warranty repair replacement
    exchange return label discount coupon offer promotion subscription renewal contract
    agreement signature approval pending processed failed declined verify verification
    identity passport licence utility bill proof residence schedule reschedule meeting video
    link zoom slot evening weekend holiday closed hours location parking directions floor
    building reception desk advisor consultant portfolio investment shares fund pension tax
    report annual quarterly summary overview figures spreadsheet attachment file pdf scan
    photo picture screenshot error bug crash slow working broken fixed resolved escalate
    complaint feedback review rating survey urgent important reminder deadline overdue late
    early exactly approximately total amount dollars yen euros cash cheque wallet transaction
    reference code pin otp sms notification alert fraud suspicious blocked unblock freeze
    dispute chargeback authorise beneficiary iban swift routing sort salary payroll employer
    landlord tenant lease rent utilities electricity water broadband mobile roaming plan
    upgrade downgrade tariff contractually compliance regulator audit auditor disclosure
    prospectus dividend coupon maturity bond equity margin collateral custody settlement
    clearing counterparty trade execution ticket confirmation allocation booking ledger
    reconciliation variance threshold exposure hedge option future forward swap notional
    """
        )
    )
)
JA_NOUNS = _words("""
    確認 予約 明日 会議 資料 注文 振込 口座 今日 時間 連絡 変更 担当者 支払い 請求書 配送 来週
    住所 電話 メール 書類 契約 商品 在庫 見積もり 金額 残高 キャンセル 返金 手続き 申込書 印鑑
    本人確認 保険 送金 利息 手数料 領収書 伝票 店舗 営業時間 駐車場 先週 来月 午前 午後 夕方
    パスワード アプリ ログイン 明細 カード 番号 期限 住宅ローン 審査 面談 窓口 支店 通帳
    """)
JA_PARTICLES = ["の", "を", "に", "は", "が", "で", "と", "も"]
JA_ENDINGS = _words("""
    お願いします です ください ありがとうございます できますか ですか 確認しました わかりました
    送ります 届きました 大丈夫です 問題ありません 申し訳ありません よろしくお願いします
    教えてください 変更したいです いつですか どうなりましたか 助かります 承知しました
    """)
JA_GREETINGS = ["こんにちは", "お世話になっております", "すみません", "おはようございます"]
JA_LOANWORDS = ["OK", "PDF", "Zoom", "URL", "ID"]
EMOJI = ["👍", "🙏", "😊", "🎉", "✅", "😅", "🙇", "📄", "💳", "⏰"]
FIRST = ["Sheena", "Oliver", "Jonas", "Camille", "Ana", "Priya", "Wei", "Fatima", "Lukas", "Emma"]
LAST = ["Nelson", "Hughes", "Weber", "Martin", "Souza", "Patel", "Chen", "Haddad", "Novak", "Reid"]
JA_FAMILY = ["佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤"]
JA_GIVEN = ["太郎", "花子", "健太", "美咲", "翔", "陽菜", "大輔", "さくら", "蓮", "結衣"]

# Planted needles: made-up words and a Japanese term no other text has (鰻 is nowhere else).
RARE_TERMS = ("zanzibarite", "quokkaberry", "鰻重")
# Each occurs as a phrase in planted messages; its words also occur apart elsewhere. No
# vocabulary word ends in "wire" or starts with "transfer", so the phrase check on the
# decrypted text (a substring of the normalised text) and FTS5's phrase agree.
PHRASES = ("wire transfer", "口座振込")
JAPANESE_SHARE = 0.3


def _cumulative(count: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1 / (rank + 1) ** exponent for rank in range(count)))


EN_CUM = _cumulative(len(EN_WORDS), 1.0)
JA_NOUN_CUM = _cumulative(len(JA_NOUNS), 0.9)
JA_ENDING_CUM = _cumulative(len(JA_ENDINGS), 0.9)
JA_PARTICLE_CUM = _cumulative(len(JA_PARTICLES), 0.7)
_CJK = re.compile(r"[\u3005-\u3007\u3041-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


@dataclass(frozen=True, slots=True)
class Params:
    """What the cached archive is built from."""

    messages: int
    contacts: int
    accounts: int
    needles: int  # messages holding each rare term

    def key(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "contacts": self.contacts,
            "accounts": self.accounts,
            "needles": self.needles,
            "seed": SEED,
            "corpus_version": CORPUS_VERSION,
        }


@dataclass(frozen=True, slots=True)
class Message:
    n: int  # 1-based, in time order: the FTS5 rowid
    account: int
    contact: int
    at: int  # Unix seconds
    outbound: bool
    text: str


def is_japanese_contact(contact: int) -> bool:
    return contact % 3 == 0


def phone(contact: int) -> str:
    """``wa_id`` of a contact: +1 650 555 xxxx or +81 90 xxxx xxxx, without the plus."""
    return f"8190{contact:08d}" if is_japanese_contact(contact) else f"1650555{contact:04d}"


def contact_name(rng: random.Random, contact: int) -> str:
    if is_japanese_contact(contact):
        return rng.choice(JA_FAMILY) + " " + rng.choice(JA_GIVEN)
    return rng.choice(FIRST) + " " + rng.choice(LAST)


def english(rng: random.Random, planted: Sequence[str]) -> str:
    count = min(30, 3 + int(rng.expovariate(1 / 8)))
    words = rng.choices(EN_WORDS, cum_weights=EN_CUM, k=count)
    if rng.random() < 0.25:  # order references and amounts: the long tail of the index
        words.insert(rng.randrange(len(words) + 1), str(rng.randrange(10_000, 1_000_000)))
    for term in planted:
        words.insert(rng.randrange(len(words) + 1), term)
    words[0] = words[0].capitalize()
    text = " ".join(words) + rng.choice([".", "?", "", "!"])
    if rng.random() < 0.15:
        text += " " + rng.choice(EMOJI)
    return text


def japanese(rng: random.Random, planted: Sequence[str]) -> str:
    target = min(30, 3 + int(rng.expovariate(1 / 7)))
    pieces: list[str] = []
    if rng.random() < 0.3:
        pieces.append(rng.choice(JA_GREETINGS) + "、")
    while len(pieces) < target:
        for _ in range(rng.randint(1, 3)):
            pieces.append(rng.choices(JA_NOUNS, cum_weights=JA_NOUN_CUM)[0])
            pieces.append(rng.choices(JA_PARTICLES, cum_weights=JA_PARTICLE_CUM)[0])
        pieces.append(rng.choices(JA_ENDINGS, cum_weights=JA_ENDING_CUM)[0] + "。")
    if rng.random() < 0.1:
        pieces.insert(rng.randrange(len(pieces) + 1), " " + rng.choice(JA_LOANWORDS) + " ")
    for term in planted:
        pieces.insert(rng.randrange(len(pieces) + 1), term)
    text = "".join(pieces)
    if rng.random() < 0.15:
        text += rng.choice(EMOJI)
    return text


def corpus(params: Params) -> Iterator[Message]:
    """Every message, in time order; the same for the same parameters."""
    rng = random.Random(SEED)
    n = params.messages
    planted: dict[int, list[str]] = {}
    phrase_count = max(3, n // 500)
    wanted = [(t, params.needles) for t in RARE_TERMS] + [(p, phrase_count) for p in PHRASES]
    positions = rng.sample(range(n), sum(count for _, count in wanted))
    for term, count in wanted:
        for position in positions[:count]:
            planted.setdefault(position, []).append(term)
        positions = positions[count:]
    # Some contacts write far more than others.
    contact_cum = _cumulative(params.contacts, 0.6)
    contacts = list(range(params.contacts))
    start = int((END - SPAN).timestamp())
    span = int(SPAN.total_seconds())
    step = max(1, span // n)
    for i in range(n):
        contact = rng.choices(contacts, cum_weights=contact_cum)[0]
        terms = planted.get(i, [])
        if terms:  # needles go into text of their own script
            ja = _CJK.search(terms[0]) is not None
        else:
            ja = rng.random() < (0.85 if is_japanese_contact(contact) else 0.03)
        text = japanese(rng, terms) if ja else english(rng, terms)
        yield Message(
            n=i + 1,
            account=contact % params.accounts,
            contact=contact,
            at=start + i * span // n + rng.randrange(step),
            outbound=rng.random() < 0.4,
            text=text,
        )


# -- the FTS5 baseline ----------------------------------------------------------------


def fts_tokens(text: str) -> list[str]:
    """The words of the normalised text, CJK runs as overlapping bigrams (a run of one
    character as itself), in order: the blind index's treatment, so FTS5 finds the same
    documents and phrases are consecutive tokens."""
    out: list[str] = []
    for word in normalize(text).split():
        at = 0
        for run in _CJK.finditer(word):
            if run.start() > at:
                out.append(word[at : run.start()])
            chars = run.group()
            out.extend(
                [chars] if len(chars) == 1 else [chars[i : i + 2] for i in range(len(chars) - 1)]
            )
            at = run.end()
        if at < len(word):
            out.append(word[at:])
    return out


def fts_phrase(term: str) -> str:
    return '"' + " ".join(fts_tokens(term)) + '"'


class Baseline:
    """A plaintext SQLite FTS5 index over the same messages, in time (rowid) order."""

    TEXT_SQL = (
        "SELECT m.id, m.at, m.contact, m.text, snippet(fts, 0, '', '', '…', 12) "
        "FROM fts JOIN messages AS m ON m.id = fts.rowid "
        "WHERE fts MATCH ? ORDER BY fts.rowid LIMIT ?"
    )
    RANGE_SQL = (
        "SELECT id, at, contact, text FROM messages "
        "WHERE contact = ? AND at >= ? AND at < ? ORDER BY at LIMIT ?"
    )

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        # The same durability settings as the archive's database.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")

    def create(self) -> None:
        if "fts5" not in {row[0] for row in self.db.execute("PRAGMA module_list")}:
            raise SystemExit("this Python's SQLite has no FTS5")
        self.db.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, account INTEGER NOT NULL, "
            "contact INTEGER NOT NULL, at INTEGER NOT NULL, text TEXT NOT NULL, "
            "indexed TEXT NOT NULL)"
        )
        self.db.execute("CREATE INDEX messages_contact_at ON messages (contact, at)")
        # ``indexed`` is the text normalised with CJK bigrams: unicode61 does not split
        # Japanese into words. External content: the index holds no copy of the text.
        self.db.execute(
            "CREATE VIRTUAL TABLE fts USING fts5(indexed, content='messages', "
            "content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
        )

    def add(self, messages: Sequence[Message]) -> None:
        rows = [
            (m.n, m.account, m.contact, m.at, m.text, " ".join(fts_tokens(m.text)))
            for m in messages
        ]
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
        self.db.executemany(
            "INSERT INTO fts (rowid, indexed) VALUES (?, ?)", [(r[0], r[5]) for r in rows]
        )
        self.db.execute("COMMIT")

    def text(self, match: str) -> list[Any]:
        return self.db.execute(self.TEXT_SQL, (match, PAGE)).fetchall()

    def range(self, contact: int, since: int, until: int) -> list[Any]:
        return self.db.execute(self.RANGE_SQL, (contact, since, until, PAGE)).fetchall()

    def count_text(self, match: str) -> int:
        row = self.db.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (match,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()


# -- building the archive ---------------------------------------------------------------


def settings_for(data_dir: Path) -> Settings:
    """The embedded default on ``data_dir``; the root key is a file there, kept for reuse."""
    return load_settings({"STRONGROOM_DATA_DIR": str(data_dir)})


def schema_head(settings: Settings) -> str:
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    return str(head)


def account_numbers(account: int) -> tuple[str, str]:
    """``(phone_number_id, display_phone_number)`` of a business account."""
    return f"10654035{account:07d}", f"1415555{account:04d}"


def webhook_payload(m: Message, name: str) -> dict[str, Any]:
    """A Cloud API delivery of one text message: from the customer (``messages``) or,
    for a business reply, a coexistence echo (``smb_message_echoes``)."""
    phone_number_id, display = account_numbers(m.account)
    wa_id = phone(m.contact)
    message: dict[str, Any] = {
        "id": f"wamid.BENCH{m.n:010d}",
        "timestamp": str(m.at),
        "type": "text",
        "text": {"body": m.text},
    }
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": phone_number_id},
    }
    if m.outbound:
        field_name = "smb_message_echoes"
        value["message_echoes"] = [{"from": display, "to": wa_id, **message}]
    else:
        field_name = "messages"
        value["contacts"] = [{"profile": {"name": name}, "wa_id": wa_id}]
        value["messages"] = [{"from": wa_id, **message}]
    change = {"value": value, "field": field_name}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": f"1022901293{m.account:05d}", "changes": [change]}],
    }


def _no_fsync(fd: int) -> None:
    """Stands in for ``os.fsync`` during the build only (see ``build``)."""


def disk_usage(root: Path) -> dict[str, int]:
    """Files, apparent bytes and allocated bytes under ``root``."""
    files = size = blocks = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    files += 1
                    size += st.st_size
                    blocks += st.st_blocks * 512
    return {"files": files, "bytes": size, "disk": blocks}


def clear(data_dir: Path) -> None:
    """Empty a data directory of an earlier (or half-finished) build, marker first."""
    ours = (data_dir / MARKER).exists() or (data_dir / BUILDING).exists()
    if data_dir.exists() and any(data_dir.iterdir()) and not ours:
        raise SystemExit(
            f"{data_dir} is not empty and holds no benchmark build: refusing to delete it"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / BUILDING).touch()
    (data_dir / MARKER).unlink(missing_ok=True)
    for child in data_dir.iterdir():
        if child.name == BUILDING:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def cached(data_dir: Path, params: Params) -> dict[str, Any] | None:
    """The marker of a finished build of the same corpus, if there is one."""
    try:
        marker: dict[str, Any] = json.loads((data_dir / MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if (data_dir / BUILDING).exists() or marker.get("key") != params.key():
        return None
    return marker


async def upgrade_cached(data_dir: Path, marker: dict[str, Any], head: str) -> None:
    """Bring a cached archive to the code's schema with the migrations, as a deployment
    would be brought; an interrupted upgrade leaves the cache marked unfinished."""
    print(f"  upgrading its schema from {marker['schema']} to {head} (the migrations)")
    (data_dir / BUILDING).touch()
    started = time.perf_counter()
    # As `strongroom migrate` runs them: with the keyring, which binding records needs.
    await asyncio.to_thread(migrate_database, settings_for(data_dir))
    print(f"  upgraded in {time.perf_counter() - started:,.1f} s")
    marker["schema"] = head
    write_marker(data_dir, marker)


def write_marker(data_dir: Path, marker: dict[str, Any]) -> None:
    """Write the completion marker durably, then drop the "building" stamp."""
    tmp = data_dir / (MARKER + ".tmp")
    with tmp.open("w") as out:
        json.dump(marker, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(data_dir / MARKER)
    (data_dir / BUILDING).unlink()
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def build(params: Params, data_dir: Path, batch: int) -> dict[str, Any]:
    """Build the archive and the FTS5 baseline; return the completion marker."""
    clear(data_dir)
    started = time.perf_counter()
    settings = settings_for(data_dir)
    head = schema_head(settings)
    await asyncio.to_thread(upgrade, settings.database_url, head)
    services = await open_services(settings)
    baseline = Baseline(data_dir / FTS_FILE)
    baseline.create()
    try:
        # Durability is not what this benchmark measures: the file vault fsyncs every
        # object, its sidecar and their directories, and 2M+ fsyncs would take most of
        # an hour. SQLite's own syncs (C code, synchronous=FULL) are untouched, and the
        # whole directory is synced once at the end.
        with mock.patch.object(os, "fsync", _no_fsync):
            marker = await fill(services, baseline, params, batch)
    finally:
        await services.close()
        baseline.close()
    synced = time.perf_counter()
    os.sync()
    marker["seconds"]["sync"] = time.perf_counter() - synced
    marker["vault"] = disk_usage(settings.vault_path)
    marker["seconds"]["wall"] = time.perf_counter() - started
    marker["schema"] = head
    marker["key"] = params.key()
    marker["built_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_marker(data_dir, marker)
    return marker


async def fill(
    services: Services, baseline: Baseline, params: Params, batch: int
) -> dict[str, Any]:
    """Accounts, contacts, then the messages in transactions of ``batch``, each batch
    also added to the FTS5 baseline; return the marker's first fields."""
    rng = random.Random(SEED + 1)
    names = [contact_name(rng, c) for c in range(params.contacts)]
    accounts = []
    for a in range(params.accounts):
        phone_number_id, display = account_numbers(a)
        account = await services.accounts.register(
            Actor(id="bench"),
            phone_number_id=phone_number_id,
            display_phone_number=display,
            app_secret=f"bench-app-secret-{a}",
            verify_token=f"bench-verify-{a}",
        )
        accounts.append(account.id)
    async with services.sessions() as session, session.begin():
        contacts = []
        for c in range(params.contacts):
            contact = await services.capture.resolve_contact(session, [Identity("wa_id", phone(c))])
            assert contact is not None
            contacts.append(contact)

    stream = corpus(params)
    seconds = {"generate": 0.0, "archive": 0.0, "fts5": 0.0}
    done = corpus_bytes = 0
    step = max(batch, params.messages // 10 // batch * batch)
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        chunk = list(itertools.islice(stream, batch))
        if not chunk:
            break
        payloads = [webhook_payload(m, names[m.contact]) for m in chunk]
        corpus_bytes += sum(len(m.text.encode()) for m in chunk)
        t1 = time.perf_counter()
        received = datetime.fromtimestamp(chunk[-1].at, UTC)
        triples: list[tuple[str, str | None, Item]] = []
        for m, payload in zip(chunk, payloads, strict=True):
            (item,) = extract(payload, received)
            triples.append((accounts[m.account], contacts[m.contact], item))
        async with services.sessions() as session, session.begin():
            await services.capture.store_items(
                session, triples, journal_entry_id=None, received_at=received
            )
        t2 = time.perf_counter()
        baseline.add(chunk)
        t3 = time.perf_counter()
        seconds["generate"] += t1 - t0
        seconds["archive"] += t2 - t1
        seconds["fts5"] += t3 - t2
        done += len(chunk)
        if done % step == 0 or done == params.messages:
            print(
                f"  {done:>10,} messages  {time.perf_counter() - started:7.0f} s   "
                f"archive {done / seconds['archive']:6.0f} msg/s   "
                f"FTS5 {done / seconds['fts5']:7.0f} msg/s",
                flush=True,
            )
    return {
        "accounts": accounts,
        "contacts": contacts,
        "messages": done,
        "corpus_bytes": corpus_bytes,
        "seconds": seconds,
    }


# -- the queries ------------------------------------------------------------------------


@dataclass(slots=True)
class Query:
    """One query, ours and the equivalent for FTS5."""

    label: str
    text: str
    filters: Filters
    match: str | None = None  # an FTS5 MATCH expression, or a contact range:
    contact_range: tuple[int, int, int] | None = None
    matches: int = 0  # documents of the corpus that match (counted on the FTS5 side)


@dataclass(slots=True)
class Kind:
    """A kind of query and what the runs measured."""

    key: str
    title: str
    queries: list[Query]
    ours: list[float] = field(default_factory=list)
    fts: list[float] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)  # ours, first page
    fts_rows: list[int] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    error: str | None = None

    def agree(self) -> int:
        """Runs whose first page held every match, up to the page size."""
        return sum(h == min(PAGE, m) for h, m in zip(self.hits, self.matches, strict=True))


def text_query(*parts: str, phrase: bool = False) -> Query:
    """Words ANDed, or (``phrase``) one quoted phrase."""
    if phrase:
        (words,) = parts
        return Query(f'"{words}"', f'"{words}"', Filters(), match=fts_phrase(words))
    text = " ".join(parts)
    return Query(text, text, Filters(), match=" AND ".join(fts_phrase(p) for p in parts))


def contact_windows(
    baseline: Baseline, contacts: list[str], messages: int, count: int
) -> list[Query]:
    """A month of one contact's messages, around a message picked at random."""
    rng = random.Random(SEED + 2)
    month = 30 * 24 * 3600
    out = []
    for _ in range(count):
        contact, at = baseline.db.execute(
            "SELECT contact, at FROM messages WHERE id = ?", (rng.randint(1, messages),)
        ).fetchone()
        since = at - rng.randrange(month)
        filters = Filters(
            contact_ids=frozenset({contacts[contact]}),
            since=datetime.fromtimestamp(since, UTC),
            until=datetime.fromtimestamp(since + month, UTC),
        )
        label = f"contact {contact}, {filters.since:%Y-%m-%d} + 30 days"
        out.append(Query(label, "", filters, contact_range=(contact, since, since + month)))
    return out


def plan(baseline: Baseline, marker: dict[str, Any], runs: int) -> list[Kind]:
    """The query kinds; each contact range is used by one run only."""
    contacts: list[str] = marker["contacts"]
    kinds = [
        Kind("rare", "rare term", [text_query(t) for t in RARE_TERMS]),
        Kind("common_en", "common term (en)", [text_query(w) for w in ("the", "you", "please")]),
        Kind("common_ja", "common term (ja)", [text_query(w) for w in ("です", "確認", "予約")]),
        Kind(
            "two_terms",
            "two terms",
            [
                text_query("please", "invoice"),
                text_query("account", "statement"),
                text_query("order", "refund"),
            ],
        ),
        Kind("phrase", "phrase", [text_query(p, phrase=True) for p in PHRASES]),
        Kind(
            "contact_range",
            "contact + month",
            contact_windows(baseline, contacts, marker["messages"], runs),
        ),
    ]
    for kind in kinds:
        for query in kind.queries:
            query.matches = count_matches(baseline, query)
    return kinds


def count_matches(baseline: Baseline, query: Query) -> int:
    if query.match is not None:
        return baseline.count_text(query.match)
    assert query.contact_range is not None
    row = baseline.db.execute(
        "SELECT count(*) FROM messages WHERE contact = ? AND at >= ? AND at < ?",
        query.contact_range,
    ).fetchone()
    return int(row[0])


def run_fts(baseline: Baseline, query: Query) -> int:
    if query.match is not None:
        return len(baseline.text(query.match))
    assert query.contact_range is not None
    return len(baseline.range(*query.contact_range))


async def measure(
    services: Services, baseline: Baseline, kinds: list[Kind], repeat: int, warmup: int
) -> None:
    """Ours and FTS5's alternately, run by run, so that noise falls on both."""
    for kind in kinds:
        for i in range(warmup + repeat):
            query = kind.queries[i % len(kind.queries)]
            t0 = time.perf_counter()
            try:
                hits, _ = await services.search.search(query.text, query.filters, limit=PAGE)
            except SearchError as exc:
                kind.error = f"{type(exc).__name__}: {exc}"
                break
            t1 = time.perf_counter()
            rows = run_fts(baseline, query)
            t2 = time.perf_counter()
            if i >= warmup:
                kind.ours.append(t1 - t0)
                kind.fts.append(t2 - t1)
                kind.hits.append(len(hits))
                kind.fts_rows.append(rows)
                kind.matches.append(query.matches)


# -- sizes ----------------------------------------------------------------------------------


def table_sizes(path: Path) -> dict[str, int] | None:
    """Bytes of pages per table, its indexes included (``dbstat``); ``None`` without it."""
    db = sqlite3.connect(path)
    try:
        try:
            pages = db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
        except sqlite3.OperationalError:
            return None
        owner = dict(db.execute("SELECT name, tbl_name FROM sqlite_master"))
    finally:
        db.close()
    sizes: dict[str, int] = {}
    for name, size in pages:
        table = owner.get(name, name)
        sizes[table] = sizes.get(table, 0) + int(size)
    return sizes


def file_size(path: Path) -> int:
    """A database file with its WAL, if one is left."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def sizes(data_dir: Path, marker: dict[str, Any]) -> list[tuple[str, int, str]]:
    """``(what, bytes, note)`` rows of the size report."""
    db_path = settings_for(data_dir).data_dir / "strongroom.db"
    ours = table_sizes(db_path)
    fts = table_sizes(data_dir / FTS_FILE)
    rows: list[tuple[str, int, str]] = []
    if ours is None or fts is None:
        # Rough: a blind-index row is two 8-byte integers and an 8-byte token, plus
        # SQLite's cell overhead.
        db = sqlite3.connect(db_path)
        (tokens,) = db.execute("SELECT count(*) FROM search_tokens").fetchone()
        db.close()
        rows.append(("blind index (search_tokens)", tokens * 30, "ESTIMATED: no dbstat"))
    else:
        rows.append(("blind index (search_tokens + indexes)", ours["search_tokens"], ""))
        rows.append(("records (+ indexes)", ours["records"], ""))
        rows.append(("sealed_objects (+ indexes)", ours["sealed_objects"], ""))
    rows.append(("whole database file", file_size(db_path), "strongroom.db"))
    vault = marker["vault"]
    rows.append(
        (
            "vault directory (objects + sidecars)",
            vault["bytes"],
            f"{vault['files']:,} files, {vault['disk'] / 1e6:,.0f} MB allocated on disk",
        )
    )
    if fts is not None:
        index = sum(size for name, size in fts.items() if name.startswith("fts_"))
        rows.append(("FTS5 index (fts_* shadow tables)", index, ""))
        content = fts["messages"]
        rows.append(("FTS5 content table (plaintext)", content, "text + its bigram form"))
    rows.append(("FTS5 database file", file_size(data_dir / FTS_FILE), FTS_FILE))
    return rows


# -- the report -----------------------------------------------------------------------------


def pct(latencies: Sequence[float], q: float) -> float:
    """The ``q`` quantile in milliseconds."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3


def spread(values: Sequence[int]) -> str:
    low, high = min(values, default=0), max(values, default=0)
    return f"{low}" if low == high else f"{low}-{high}"


def report(kinds: list[Kind], repeat: int, warmup: int) -> None:
    print(
        f"\nlatency, ms: {repeat} timed runs per kind after {warmup} warm-ups, first page of "
        f"{PAGE}, in-process (no HTTP, no audit write), warm page cache"
    )
    print(
        f"  {'query':<18}{'ours p50':>9}{'p95':>8}{'FTS5 p50':>10}{'p95':>7}"
        f"{'ratio p50':>11}{'p95':>7}{'hits':>7}{'matches':>15}{'agree':>8}"
    )
    for kind in kinds:
        if kind.error and not kind.ours:
            print(f"  {kind.title:<18}NOT RUN: Search.search raised {kind.error}")
            continue
        ours50, ours95 = pct(kind.ours, 0.5), pct(kind.ours, 0.95)
        fts50, fts95 = pct(kind.fts, 0.5), pct(kind.fts, 0.95)
        print(
            f"  {kind.title:<18}{ours50:>9.2f}{ours95:>8.2f}{fts50:>10.3f}{fts95:>7.3f}"
            f"{ours50 / fts50:>10.1f}x{ours95 / fts95:>6.1f}x{spread(kind.hits):>7}"
            f"{spread(kind.matches):>15}{kind.agree():>5}/{len(kind.hits)}"
        )
    print(
        "  hits: ours, first page; matches: documents of the corpus matching (FTS5 count);"
        f" agree: runs whose first page held min({PAGE}, matches) hits"
    )
    print("  queries per kind, run in turn:")
    for kind in kinds:
        labels = ", ".join(q.label for q in kind.queries[:3])
        more = f", … ({len(kind.queries)} in all)" if len(kind.queries) > 3 else ""
        print(f"    {kind.title:<18}{labels}{more}")

    print("\ntargets (from the issue) against this run")
    print(f"  {'query':<18}{f'p95 <= {TARGET_P95_MS:.0f} ms':>18}{'within 2x FTS5 (p50, p95)':>30}")
    for kind in kinds:
        if not kind.ours:
            print(f"  {kind.title:<18}{'NOT RUN':>18}{'NOT RUN':>30}")
            continue
        p95 = pct(kind.ours, 0.95)
        ratios = (p95 / pct(kind.fts, 0.95), pct(kind.ours, 0.5) / pct(kind.fts, 0.5))
        latency_ok = "met" if p95 <= TARGET_P95_MS else "NOT MET"
        ratio_ok = "met" if max(ratios) <= TARGET_RATIO else "NOT MET"
        print(
            f"  {kind.title:<18}{f'{p95:.1f} ms {latency_ok}':>18}"
            f"{f'{ratios[1]:.1f}x, {ratios[0]:.1f}x {ratio_ok}':>30}"
        )


def report_sizes(rows: list[tuple[str, int, str]], marker: dict[str, Any]) -> None:
    corpus_bytes = marker["corpus_bytes"]
    print(
        f"\nsizes on disk, against the corpus: {corpus_bytes / 1e6:,.1f} MB of UTF-8 message "
        f"text in {marker['messages']:,} messages"
    )
    for what, size, note in rows:
        print(
            f"  {what:<40}{size / 1e6:>10,.1f} MB {size / corpus_bytes:>7.2f}x corpus"
            + (f"   ({note})" if note else "")
        )


@dataclass(slots=True)
class Result:
    """What ``main`` measured, for callers such as the smoke test."""

    kinds: dict[str, Kind]
    sizes: dict[str, int]
    built: bool


async def bench(args: argparse.Namespace) -> Result:
    params = Params(args.messages, args.contacts, args.accounts, args.needles)
    data_dir: Path = args.data_dir
    settings = settings_for(data_dir)
    print(
        f"Strongroom search benchmark: {params.messages:,} messages, {params.contacts:,} "
        f"contacts, {params.accounts} accounts; data in {data_dir}; {os.cpu_count()} CPUs, "
        f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    marker = None if args.rebuild else cached(data_dir, params)
    built = marker is None
    if marker is None:
        print(f"\nbuilding the archive and its FTS5 baseline, {args.batch:,} messages a commit")
        marker = await build(params, data_dir, args.batch)
    else:
        print(f"\nreusing the build of {marker['built_at']} (--rebuild to build afresh)")
        head = schema_head(settings)
        if marker["schema"] != head:
            await upgrade_cached(data_dir, marker, head)
    s = marker["seconds"]
    n = marker["messages"]
    print(
        f"  archive (extract, seal, records, blind index; vault fsync off): {s['archive']:,.1f} s"
        f" = {n / s['archive']:,.0f} msg/s\n"
        f"  FTS5 baseline (normalise, bigrams, insert): {s['fts5']:,.1f} s = "
        f"{n / s['fts5']:,.0f} msg/s\n"
        f"  generating the synthetic messages: {s['generate']:,.1f} s; sync of the data "
        f"directory: {s['sync']:,.1f} s; whole build (with migrations, sizing the vault) "
        f"{s['wall']:,.1f} s = {s['wall'] / 60:,.1f} min"
    )

    baseline = Baseline(data_dir / FTS_FILE)
    services = await open_services(settings)
    try:
        kinds = plan(baseline, marker, args.warmup + args.repeat)
        await measure(services, baseline, kinds, args.repeat, args.warmup)
    finally:
        await services.close()
        baseline.close()
    report(kinds, args.repeat, args.warmup)
    rows = sizes(data_dir, marker)
    report_sizes(rows, marker)
    print(f"\nload average at the end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return Result({k.key: k for k in kinds}, {what: size for what, size, _ in rows}, built)


def main(argv: Sequence[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages in the archive")
    parser.add_argument("--contacts", type=int, default=1000, help="contacts (at most 10,000)")
    parser.add_argument("--accounts", type=int, default=20, help="business accounts")
    parser.add_argument("--needles", type=int, default=20, help="messages holding each rare term")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per query kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per query kind")
    parser.add_argument(
        "--batch",
        type=int,
        default=10_000,
        help="messages per transaction (the vault looks up each contact's key once a batch)",
    )
    parser.add_argument(
        "--data-dir", help="where the build is cached (default ./var/bench-search-<messages>)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build even if a cache exists")
    args = parser.parse_args(argv)
    if not 1 <= args.contacts <= 10_000 or args.accounts < 1 or args.repeat < 1:
        parser.error("need 1-10,000 contacts, at least one account and one run")
    if args.messages < 10 * args.needles * len(RARE_TERMS):
        parser.error("too few messages for the needles")
    args.data_dir = Path(args.data_dir or f"./var/bench-search-{args.messages}").resolve()
    return asyncio.run(bench(args))


if __name__ == "__main__":
    main()
