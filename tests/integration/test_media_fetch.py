"""Media fetch against the fake Graph API over real HTTP, the real database
(SQLite and PostgreSQL) and the file vault."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from api.sandbox.fake_graph import FakeMedia, running_fake_graph
from archiver.accounts.services import AccountService
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import FixedClock
from archiver.core.db import Writer
from archiver.core.subjects import record_subject
from archiver.crypto.keyring import Keyring
from archiver.media.services import CLAIM_LEASE, FIRST_RETRY, MediaFetcher, sha256_matches
from archiver.records.models import Contact, MediaItem, Record
from archiver.search.blind_index import BlindIndex, MetaIdIndex
from archiver.vault.models import SealedObject
from archiver.vault.services import Vault
from archiver.whatsapp.graph import GraphClient, GraphPermanent

Sessions = async_sessionmaker[AsyncSession]

TOKEN = "EAAG-test-token-0123456789abcdef"
RETENTION = timedelta(days=30)
RECORD_RETENTION = timedelta(days=400)
META_IDS = MetaIdIndex(secrets.token_bytes(32))


@pytest.fixture
def media() -> FakeMedia:
    return FakeMedia(access_token=TOKEN)


@pytest.fixture
def graph_url(media: FakeMedia) -> Iterator[str]:
    with running_fake_graph(media) as url:
        yield url


@pytest.fixture
async def graph(graph_url: str) -> AsyncIterator[GraphClient]:
    # One try per run, so that retries across runs are what the tests observe.
    client = GraphClient(graph_url, max_attempts=1)
    yield client
    await client.aclose()


@pytest.fixture
async def accounts(
    keyring: Keyring, clock: FixedClock, sessions: Sessions, vault: Vault
) -> AsyncIterator[AccountService]:
    writer = Writer(sessions)
    audit = AuditLog(sessions, vault, keyring, clock, writer=writer)
    index = BlindIndex(secrets.token_bytes(32))
    yield AccountService(keyring, index, clock, sessions=sessions, writer=writer, audit=audit)
    await audit.close()


@pytest.fixture
def fetcher(
    graph: GraphClient,
    vault: Vault,
    sessions: Sessions,
    accounts: AccountService,
    clock: FixedClock,
) -> MediaFetcher:
    return MediaFetcher(graph, vault, Writer(sessions), accounts, clock, retention=RETENTION)


@dataclass
class Archive:
    """Seeds accounts, contacts, sealed records and pending media items."""

    sessions: Sessions
    vault: Vault
    accounts: AccountService
    clock: FixedClock

    async def account(self, access_token: str | None = TOKEN) -> str:
        account = await self.accounts.register(
            Actor(id="test"),
            phone_number_id=str(secrets.randbelow(10**15)),
            display_phone_number="+1 555 078 3881",
            app_secret="app-secret",
            verify_token="verify-token",
            access_token=access_token,
        )
        return account.id

    async def media_item(
        self,
        account_id: str,
        media: dict[str, Any],
        *,
        received_at: datetime | None = None,
        due: datetime | None = None,
        record_retention: timedelta = RECORD_RETENTION,
    ) -> int:
        now = self.clock.now()
        wamid = f"wamid.{uuid.uuid4().hex}"
        item = {
            "from": "16505551234",
            "id": wamid,
            "timestamp": str(int(now.timestamp())),
            "type": "image",
            "image": media,
        }
        document = {
            "field": "messages",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1065"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "item": item,
        }
        async with self.sessions() as session, session.begin():
            contact = Contact(id=f"ct_{uuid.uuid4().hex[:16]}", created_at=now)
            session.add(contact)
            record = Record(
                account_id=account_id,
                contact_id=contact.id,
                dedupe_token=META_IDS.dedupe_token(account_id, f"m:{wamid}"),
                kind="message",
                source="cloud_api",
                direction="inbound",
                item_type="image",
                wamid_token=META_IDS.token(account_id, wamid),
                occurred_at=now,
                received_at=received_at or now,
                has_media=True,
            )
            sealed = await self.vault.seal(
                session,
                kind="message",
                subject=record_subject(record),
                plaintext=json.dumps(document).encode(),
                retain_until=now + record_retention,
            )
            record.object_id = sealed.id
            session.add(record)
            await session.flush()
            row = MediaItem(
                record_id=record.id,
                mime_type=media.get("mime_type"),
                expected_sha256=media.get("sha256"),
                state="pending",
                attempts=0,
                next_attempt_at=due or now,
            )
            session.add(row)
            await session.flush()
            return row.id

    async def get(self, item_id: int) -> MediaItem:
        async with self.sessions() as session:
            item = await session.get(MediaItem, item_id)
            assert item is not None
            return item

    async def media_bytes(self, item: MediaItem) -> bytes:
        async with self.sessions() as session:
            sealed = await session.get(SealedObject, item.object_id)
            assert sealed is not None
            assert sealed.kind == "media"
            return await self.vault.open(session, sealed)


@pytest.fixture
def archive(
    sessions: Sessions, vault: Vault, accounts: AccountService, clock: FixedClock
) -> Archive:
    return Archive(sessions, vault, accounts, clock)


def image(media: FakeMedia, media_id: str, **extra: Any) -> dict[str, Any]:
    """The ``image`` object of a webhook for media the fake holds."""
    return {
        "id": media_id,
        "mime_type": "image/jpeg",
        "sha256": media[media_id].sha256,
        "caption": "Taj Mahal",
        **extra,
    }


def jpeg(size: int = 40_000) -> bytes:
    return b"\xff\xd8\xff\xe0" + secrets.token_bytes(size)


async def test_media_is_sealed_under_the_record_subject_and_decrypts_exactly(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, tmp_path: Path, clock: FixedClock
) -> None:
    data = jpeg()
    media.add("1001", data, "image/jpeg")
    item_id = await archive.media_item(await archive.account(), image(media, "1001"))

    assert await fetcher.fetch_due() == 1

    item = await archive.get(item_id)
    assert (item.state, item.attempts, item.last_error) == ("fetched", 1, None)
    assert (item.size, item.mime_type) == (len(data), "image/jpeg")
    assert await archive.media_bytes(item) == data
    async with archive.sessions() as session:
        record = await session.get(Record, item.record_id)
        assert record is not None
        record_object = await session.get(SealedObject, record.object_id)
        media_object = await session.get(SealedObject, item.object_id)
        assert record_object is not None
        assert media_object is not None
    assert media_object.key_id == record_object.key_id  # the contact's key: shredded together
    assert media_object.retain_until == record_object.retain_until  # later than now + RETENTION
    assert (media.info_requests["1001"], media.download_requests["1001"]) == (1, 1)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "vault").rglob("*") if p.is_file())
    assert data[4:64] not in stored  # sealed, never plaintext at rest


async def test_media_lives_at_least_the_media_retention(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    media.add("1002", jpeg(), "image/jpeg")
    account = await archive.account()
    item_id = await archive.media_item(
        account, image(media, "1002"), record_retention=timedelta(days=10)
    )
    await fetcher.fetch_due()
    item = await archive.get(item_id)
    async with archive.sessions() as session:
        sealed = await session.get(SealedObject, item.object_id)
    assert sealed is not None
    assert sealed.retain_until == (clock.now() + RETENTION).replace(microsecond=0)


async def test_a_direct_url_is_used_without_resolving_the_id(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, graph_url: str
) -> None:
    data = jpeg()
    media.add("1003", data, "image/jpeg")
    url = f"{graph_url}/download/1003?mid=1003&hash=abc"
    item_id = await archive.media_item(await archive.account(), image(media, "1003", url=url))
    await fetcher.fetch_due()
    item = await archive.get(item_id)
    assert item.state == "fetched"
    assert await archive.media_bytes(item) == data
    assert (media.info_requests["1003"], media.download_requests["1003"]) == (0, 1)


async def test_a_dead_direct_url_falls_back_to_the_media_id(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, graph_url: str
) -> None:
    data = jpeg()
    media.add("1004", data, "image/jpeg")
    url = f"{graph_url}/download/no-longer-there?mid=1004"
    item_id = await archive.media_item(await archive.account(), image(media, "1004", url=url))
    await fetcher.fetch_due()
    item = await archive.get(item_id)
    assert item.state == "fetched"
    assert await archive.media_bytes(item) == data
    assert media.info_requests["1004"] == 1


async def test_a_sha256_mismatch_is_retried_and_then_succeeds(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    data = jpeg()
    media.add("1005", data, "image/jpeg", wrong_hash=True)
    item_id = await archive.media_item(await archive.account(), image(media, "1005"))

    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert (item.state, item.attempts, item.object_id) == ("pending", 1, None)
    assert item.last_error is not None
    assert "SHA-256" in item.last_error
    assert item.next_attempt_at == clock.now() + FIRST_RETRY

    media["1005"].wrong_hash = False
    clock.advance(FIRST_RETRY)
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert (item.state, item.attempts, item.last_error) == ("fetched", 2, None)
    assert await archive.media_bytes(item) == data


async def test_a_persistent_sha256_mismatch_fails_and_seals_nothing(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    media.add("1006", jpeg(), "image/jpeg", wrong_hash=True)
    item_id = await archive.media_item(await archive.account(), image(media, "1006"))
    for _ in range(5):
        await fetcher.fetch_due()
        clock.advance(timedelta(hours=1))
    item = await archive.get(item_id)
    assert (item.state, item.attempts) == ("failed", 3)
    assert item.last_error == (
        "downloaded bytes do not match the SHA-256 Meta advertised (after 3 downloads)"
    )
    async with archive.sessions() as session:
        sealed_media = await session.scalar(
            select(func.count()).select_from(SealedObject).where(SealedObject.kind == "media")
        )
    assert sealed_media == 0


async def test_server_errors_are_retried_on_later_runs(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    data = jpeg()
    media.add("1007", data, "image/jpeg", fail_times=2)
    item_id = await archive.media_item(await archive.account(), image(media, "1007"))

    assert await fetcher.fetch_due() == 1
    first = await archive.get(item_id)
    assert (first.state, first.attempts) == ("pending", 1)
    assert first.last_error is not None
    assert first.last_error.startswith("Graph API 500")
    assert first.next_attempt_at == clock.now() + FIRST_RETRY

    clock.advance(FIRST_RETRY - timedelta(seconds=1))
    assert await fetcher.fetch_due() == 0  # not due yet
    clock.advance(timedelta(seconds=1))
    assert await fetcher.fetch_due() == 1
    second = await archive.get(item_id)
    assert (second.state, second.attempts) == ("pending", 2)
    assert second.next_attempt_at == clock.now() + 2 * FIRST_RETRY  # exponential

    clock.advance(2 * FIRST_RETRY)
    assert await fetcher.fetch_due() == 1
    done = await archive.get(item_id)
    assert (done.state, done.attempts, done.last_error) == ("fetched", 3, None)
    assert await archive.media_bytes(done) == data
    assert media.info_requests["1007"] == 3


async def test_the_client_retries_within_one_run(
    graph_url: str,
    vault: Vault,
    sessions: Sessions,
    accounts: AccountService,
    clock: FixedClock,
    archive: Archive,
    media: FakeMedia,
) -> None:
    media.add("1008", jpeg(), "image/jpeg", fail_times=2)
    item_id = await archive.media_item(await archive.account(), image(media, "1008"))
    client = GraphClient(graph_url, max_attempts=3, backoff_seconds=0.01)
    try:
        fetcher = MediaFetcher(
            client, vault, Writer(sessions), accounts, clock, retention=RETENTION
        )
        assert await fetcher.fetch_due() == 1
    finally:
        await client.aclose()
    item = await archive.get(item_id)
    assert (item.state, item.attempts) == ("fetched", 1)
    assert media.info_requests["1008"] == 3


async def test_it_gives_up_after_max_attempts(
    graph: GraphClient,
    vault: Vault,
    sessions: Sessions,
    accounts: AccountService,
    clock: FixedClock,
    archive: Archive,
    media: FakeMedia,
) -> None:
    media.add("1009", jpeg(), "image/jpeg", fail_times=100)
    item_id = await archive.media_item(await archive.account(), image(media, "1009"))
    fetcher = MediaFetcher(
        graph, vault, Writer(sessions), accounts, clock, retention=RETENTION, max_attempts=3
    )
    for _ in range(3):
        assert await fetcher.fetch_due() == 1
        clock.advance(timedelta(hours=1))
    item = await archive.get(item_id)
    assert (item.state, item.attempts) == ("failed", 3)
    assert item.last_error is not None
    assert item.last_error.startswith("gave up after 3 attempts; Graph API 500")
    assert await fetcher.fetch_due() == 0


async def test_an_expired_media_id_fails_with_a_readable_reason(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia
) -> None:
    media.add("1010", jpeg(), "image/jpeg", expired=True)
    item_id = await archive.media_item(await archive.account(), image(media, "1010"))
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert item.state == "failed"
    assert item.last_error == (
        "Meta no longer has this media: it expired (Meta keeps media 7 days) or was deleted"
    )


async def test_an_unresolvable_id_of_an_old_record_fails_instead_of_retrying(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    media.add("1011", jpeg(), "image/jpeg", fail_times=100)
    item_id = await archive.media_item(
        await archive.account(),
        image(media, "1011"),
        received_at=clock.now() - timedelta(days=8),
    )
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert item.state == "failed"
    assert item.last_error is not None
    assert item.last_error.startswith("media id expired (Meta keeps media 7 days)")


async def test_429_retry_after_is_honoured(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    data = jpeg()
    media.add("1012", data, "image/jpeg", throttle_times=1, retry_after=120)
    item_id = await archive.media_item(await archive.account(), image(media, "1012"))

    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert (item.state, item.attempts) == ("pending", 1)
    assert item.last_error is not None
    assert "429" in item.last_error
    assert item.next_attempt_at == clock.now() + timedelta(seconds=120)  # not the 30 s backoff

    clock.advance(timedelta(seconds=119))
    assert await fetcher.fetch_due() == 0
    clock.advance(timedelta(seconds=1))
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert item.state == "fetched"
    assert await archive.media_bytes(item) == data


async def test_a_rejected_token_fails_without_echoing_it(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia
) -> None:
    media.add("1013", jpeg(), "image/jpeg")
    wrong = "EAAG-wrong-token-abcdef0123456789"
    item_id = await archive.media_item(await archive.account(wrong), image(media, "1013"))
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert item.state == "failed"
    assert item.last_error == (
        "Meta rejected the account's access token (HTTP 401); the account needs a valid token"
    )
    assert media.unauthorized == 1
    assert media.download_requests["1013"] == 0


async def test_an_account_without_a_token_fails_without_calling_meta(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia
) -> None:
    media.add("1014", jpeg(), "image/jpeg")
    item_id = await archive.media_item(await archive.account(None), image(media, "1014"))
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert (item.state, item.last_error) == ("failed", "account has no access token")
    assert media.info_requests["1014"] == 0
    assert media.unauthorized == 0


async def test_media_over_the_size_limit_fails(
    graph: GraphClient,
    vault: Vault,
    sessions: Sessions,
    accounts: AccountService,
    clock: FixedClock,
    archive: Archive,
    media: FakeMedia,
) -> None:
    media.add("1015", jpeg(3 * 2**20), "image/jpeg")
    item_id = await archive.media_item(await archive.account(), image(media, "1015"))
    fetcher = MediaFetcher(
        graph, vault, Writer(sessions), accounts, clock, retention=RETENTION, max_bytes=2**20
    )
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert (item.state, item.last_error) == ("failed", "media is larger than the 1 MiB limit")
    assert media.download_requests["1015"] == 0  # refused on Graph's declared file_size


async def test_media_of_an_erased_contact_is_not_fetched(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, keyring: Keyring
) -> None:
    media.add("1016", jpeg(), "image/jpeg")
    item_id = await archive.media_item(await archive.account(), image(media, "1016"))
    async with archive.sessions() as session, session.begin():
        record = await session.get(Record, (await archive.get(item_id)).record_id)
        assert record is not None
        await keyring.destroy(session, record_subject(record))
    assert await fetcher.fetch_due() == 1
    item = await archive.get(item_id)
    assert item.state == "failed"
    assert item.last_error is not None
    assert "erased" in item.last_error
    assert media.info_requests["1016"] == 0


async def test_items_not_yet_due_or_done_are_not_touched(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia, clock: FixedClock
) -> None:
    media.add("1017", jpeg(), "image/jpeg")
    account = await archive.account()
    later = clock.now() + timedelta(minutes=5)
    item_id = await archive.media_item(account, image(media, "1017"), due=later)

    assert await fetcher.fetch_due() == 0
    item = await archive.get(item_id)
    assert (item.state, item.attempts, item.next_attempt_at) == ("pending", 0, later)
    assert media.info_requests["1017"] == 0

    clock.advance(timedelta(minutes=5))
    assert await fetcher.fetch_due() == 1
    assert await fetcher.fetch_due() == 0  # fetched items are not claimed again
    assert media.info_requests["1017"] == 1


async def test_one_failure_does_not_undo_another_and_limit_is_respected(
    fetcher: MediaFetcher, archive: Archive, media: FakeMedia
) -> None:
    account = await archive.account()
    media.add("1018", jpeg(), "image/jpeg", expired=True)
    media.add("1019", jpeg(), "image/jpeg")
    media.add("1020", jpeg(), "image/jpeg")
    ids = [await archive.media_item(account, image(media, m)) for m in ("1018", "1019", "1020")]

    assert await fetcher.fetch_due(limit=2) == 2
    states = [(await archive.get(i)).state for i in ids]
    assert states == ["failed", "fetched", "pending"]
    assert await fetcher.fetch_due(limit=2) == 1
    assert (await archive.get(ids[2])).state == "fetched"


async def test_concurrent_workers_claim_each_item_once(
    database_url: str,
    fetcher: MediaFetcher,
    archive: Archive,
    media: FakeMedia,
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers; embedded mode runs a single worker")
    account = await archive.account()
    names = [str(2000 + n) for n in range(6)]
    for name in names:
        media.add(name, jpeg(), "image/jpeg")
        await archive.media_item(account, image(media, name))

    counts = await asyncio.gather(*(fetcher.fetch_due() for _ in range(3)))

    assert sum(counts) == len(names)
    assert all(media.download_requests[name] == 1 for name in names)


class HeldGraph(GraphClient):
    """A Graph client whose downloads wait until the test lets them go."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, max_attempts=1)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def download(self, url: str, access_token: str, max_bytes: int) -> bytes:
        self.started.set()
        await self.release.wait()
        return await super().download(url, access_token, max_bytes)


@pytest.fixture
async def held_graph(graph_url: str) -> AsyncIterator[HeldGraph]:
    client = HeldGraph(graph_url)
    yield client
    await client.aclose()


@pytest.fixture
def held_fetcher(
    held_graph: HeldGraph,
    vault: Vault,
    sessions: Sessions,
    accounts: AccountService,
    clock: FixedClock,
) -> MediaFetcher:
    """A second worker, whose downloads wait for ``held_graph.release``."""
    return MediaFetcher(held_graph, vault, Writer(sessions), accounts, clock, retention=RETENTION)


async def test_a_download_in_progress_holds_no_database_connection(
    database_url: str,
    held_graph: HeldGraph,
    vault: Vault,
    accounts: AccountService,
    clock: FixedClock,
    archive: Archive,
    media: FakeMedia,
) -> None:
    media.add("3001", jpeg(), "image/jpeg")
    item_id = await archive.media_item(await archive.account(), image(media, "3001"))
    # One connection in all: if the download held it, nothing else could run.
    narrow = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        narrow_sessions = async_sessionmaker(narrow, expire_on_commit=False)
        fetcher = MediaFetcher(
            held_graph, vault, Writer(narrow_sessions), accounts, clock, retention=RETENTION
        )
        fetching = asyncio.create_task(fetcher.fetch_due())
        await asyncio.wait_for(held_graph.started.wait(), 10)

        assert narrow.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with narrow_sessions() as session, session.begin():
            claimed = await session.get(MediaItem, item_id)
            assert claimed is not None
            assert (claimed.state, claimed.attempts) == ("pending", 1)
            assert claimed.next_attempt_at == clock.now() + CLAIM_LEASE
            session.add(Contact(id=f"ct_{uuid.uuid4().hex[:16]}", created_at=clock.now()))

        held_graph.release.set()
        assert await fetching == 1
    finally:
        await narrow.dispose()
    assert (await archive.get(item_id)).state == "fetched"


async def test_a_worker_that_dies_mid_download_leaves_the_claim_to_expire_and_be_retried(
    held_graph: HeldGraph,
    held_fetcher: MediaFetcher,
    fetcher: MediaFetcher,
    clock: FixedClock,
    archive: Archive,
    media: FakeMedia,
) -> None:
    data = jpeg()
    media.add("3002", data, "image/jpeg")
    item_id = await archive.media_item(await archive.account(), image(media, "3002"))
    fetching = asyncio.create_task(held_fetcher.fetch_due())
    await asyncio.wait_for(held_graph.started.wait(), 10)
    fetching.cancel()  # the worker dies between its claim and its result
    with pytest.raises(asyncio.CancelledError):
        await fetching

    assert await fetcher.fetch_due() == 0  # the claim still stands
    clock.advance(CLAIM_LEASE)
    assert await fetcher.fetch_due() == 1

    item = await archive.get(item_id)
    assert (item.state, item.attempts) == ("fetched", 2)
    assert await archive.media_bytes(item) == data


async def test_a_result_that_comes_after_its_claim_expired_is_dropped(
    held_graph: HeldGraph,
    held_fetcher: MediaFetcher,
    fetcher: MediaFetcher,
    clock: FixedClock,
    archive: Archive,
    media: FakeMedia,
) -> None:
    media.add("3003", jpeg(), "image/jpeg")
    item_id = await archive.media_item(await archive.account(), image(media, "3003"))
    fetching = asyncio.create_task(held_fetcher.fetch_due())
    await asyncio.wait_for(held_graph.started.wait(), 10)
    clock.advance(CLAIM_LEASE)
    assert await fetcher.fetch_due() == 1  # another worker takes the expired claim over
    taken_over = await archive.get(item_id)

    held_graph.release.set()
    assert await fetching == 1

    item = await archive.get(item_id)
    assert (item.state, item.attempts, item.object_id) == ("fetched", 2, taken_over.object_id)
    async with archive.sessions() as session:
        media_objects = await session.scalar(
            select(func.count()).select_from(SealedObject).where(SealedObject.kind == "media")
        )
    assert media_objects == 1


async def test_the_fake_accepts_messages_sent_through_the_client(
    graph: GraphClient, media: FakeMedia
) -> None:
    message = {
        "messaging_product": "whatsapp",
        "to": "16505551234",
        "type": "text",
        "text": {"body": "hello"},
    }
    answer = await graph.request("POST", "1065/messages", TOKEN, json=message)
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": "16505551234", "wa_id": "16505551234"}]
    assert answer["messages"][0]["id"].startswith("wamid.")
    assert media.sent == [{"phone_number_id": "1065", **message}]
    with pytest.raises(GraphPermanent) as caught:
        await graph.request("POST", "1065/messages", "wrong-token", json=message)
    assert (caught.value.status, caught.value.code) == (401, 190)


def test_sha256_is_accepted_as_hex_or_base64() -> None:
    data = b"media bytes"
    digest = hashlib.sha256(data).digest()
    assert sha256_matches(digest.hex(), data)
    assert sha256_matches(digest.hex().upper(), data)
    assert sha256_matches(base64.b64encode(digest).decode(), data)
    assert sha256_matches(base64.urlsafe_b64encode(digest).decode().rstrip("="), data)
    assert not sha256_matches(hashlib.sha256(b"other").hexdigest(), data)
    assert not sha256_matches("not a hash", data)
    assert not sha256_matches(base64.b64encode(digest[:16]).decode(), data)
