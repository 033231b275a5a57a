"""Builds the running system from settings: root keys, database, vault."""

from __future__ import annotations

import asyncio
import gc
import os
import stat
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.migrate import current_revision, upgrade
from api.settings import Settings, SettingsError, parse_root_key
from archiver.accounts.services import AccountService
from archiver.audit.services import AuditLog
from archiver.capture.services import Capture, Retention
from archiver.core.clock import Clock, SystemClock
from archiver.core.db import Reader, Writer, create_engine, session_factory, sqlite_file
from archiver.core.subjects import META_ID_SUBJECT
from archiver.crypto.keyring import Keyring, new_root_key
from archiver.identity.services import ApprovalService, GrantService, IdentityService
from archiver.imports.services import ChatImporter
from archiver.keys.services import KeyRotation
from archiver.media.services import MediaFetcher
from archiver.records.binding import BINDING_SUBJECT, RecordBinding
from archiver.records.conversations import Conversations
from archiver.records.queries import Records
from archiver.records.services import IntegrityAlarm, RecordReader
from archiver.search.blind_index import BlindIndex, MetaIdIndex
from archiver.search.queries import ArchiveSearch
from archiver.search.services import Search
from archiver.vault.filestore import FileStore
from archiver.vault.interfaces import ObjectStore
from archiver.vault.s3store import S3Store
from archiver.vault.services import Vault
from archiver.whatsapp.graph import LOOPBACK_HOSTS, META_MEDIA_HOSTS, GraphClient
from policy.consent import ConsentLedger
from policy.dispatcher import Dispatcher
from policy.lexicon import Lexicon
from policy.outbox import Outbox
from policy.reactions import Reactions
from policy.send_policy import SendPolicies
from policy.snapshots import SnapshotLoader
from policy.templates import TemplateRegistry

log = structlog.get_logger("strongroom.bootstrap")


def pending_key_file(settings: Settings) -> Path:
    """Where a rotation writes the next root key before it becomes current."""
    return settings.master_key_file.with_name(settings.master_key_file.name + ".new")


def prepare_private_paths(settings: Settings) -> None:
    """Create the embedded data directory (0700), then refuse to go on when group
    or others can reach what the archive keeps on disk: the data directory, an
    SQLite database with its -wal and -shm files, a file vault's directories.

    Refusing, not repairing: a mode that someone opened is theirs to look at (the
    root key file, checked when it is read, is refused the same way).
    """
    if settings.embedded:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    checked = [("STRONGROOM_DATA_DIR", settings.data_dir)] if settings.embedded else []
    database = sqlite_file(settings.database_url)
    if database is not None:
        checked += [
            ("STRONGROOM_DATABASE_URL", Path(database + end)) for end in ("", "-wal", "-shm")
        ]
    if settings.s3 is None:
        vault = settings.vault_path
        checked += [
            ("STRONGROOM_VAULT_URL", vault / part) for part in ("", "objects", "locks", "tmp")
        ]
    for name, path in checked:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            private = "700" if stat.S_ISDIR(info.st_mode) else "600"
            raise SettingsError(
                name, f"{path} is open to group or others (mode {mode:04o}): chmod {private} it"
            )


def archive_gaps(settings: Settings) -> list[str]:
    """What an existing archive would have where ``settings`` point but is missing
    (the root key, the database or its schema), one phrase each; empty when the
    archive is there. Looks without creating anything."""
    gaps = []
    if settings.master_key is None and not settings.master_key_file.exists():
        gaps.append(
            f"no root key at {settings.master_key_file} "
            "(STRONGROOM_MASTER_KEY_FILE or STRONGROOM_MASTER_KEY)"
        )
    database = sqlite_file(settings.database_url)
    if database is not None:
        if not Path(database).exists():
            gaps.append(f"no database at {database} (STRONGROOM_DATABASE_URL)")
    elif not asyncio.run(_has_schema(settings.database_url)):
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        gaps.append(f"no Strongroom schema in the database {shown} (STRONGROOM_DATABASE_URL)")
    return gaps


async def _has_schema(database_url: str) -> bool:
    # A server database: connecting creates nothing, and an empty one has no
    # version table yet.
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
    finally:
        await engine.dispose()


def write_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` (hex) to a new file readable only by its owner, durably."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_key_file(path: Path) -> bytes:
    """Read a root key file; refuse one that others can read."""
    name = "STRONGROOM_MASTER_KEY_FILE"
    try:
        mode = path.stat().st_mode
        text = path.read_text("ascii")
    except OSError as exc:
        raise SettingsError(name, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(name, f"{path} is not a text key file") from None
    if mode & 0o077:
        raise SettingsError(name, f"{path} must not be readable by group or others (chmod 600)")
    return parse_root_key(text, name)


def load_root_keys(settings: Settings) -> list[bytes]:
    """The root keys, current first; creates the embedded key file on first run."""
    if settings.master_key is not None:
        keys = [settings.master_key]
    else:
        path = settings.master_key_file
        if not path.exists():
            if not settings.embedded:
                raise SettingsError("STRONGROOM_MASTER_KEY_FILE", f"no such file {path}")
            write_key_file(path, new_root_key())
            log.warning(
                "created a local root key for evaluation; production keeps it outside the host",
                path=str(path),
            )
        keys = [read_key_file(path)]
    pending = pending_key_file(settings)
    if settings.master_key is None and pending.exists():
        # An interrupted rotation: some subject keys may already be wrapped by it.
        keys.append(read_key_file(pending))
    return keys


def open_keyring(settings: Settings, clock: Clock | None = None) -> Keyring:
    """The keyring of the root keys that ``settings`` name (what migrations need to
    compute blind tokens)."""
    return Keyring(load_root_keys(settings), clock or SystemClock())


def migrate_database(settings: Settings) -> tuple[str | None, str | None]:
    """Bring the schema up to date, with the keyring for the migrations that rewrite
    records under a key (tokenising Meta's ids, binding records); return the
    revisions before and after."""
    keyring = open_keyring(settings)
    before = current_revision(settings.database_url)
    upgrade(settings.database_url, keyring=keyring)
    return before, current_revision(settings.database_url)


def open_store(settings: Settings, clock: Clock) -> ObjectStore:
    """The object store named by ``STRONGROOM_VAULT_URL``."""
    if settings.s3 is not None:
        s3 = settings.s3
        store = S3Store(
            s3.endpoint,
            s3.access_key,
            s3.secret_key,
            s3.bucket,
            secure=s3.secure,
            ca_bundle=str(s3.ca_bundle) if s3.ca_bundle else None,
            region=s3.region,
            clock=clock,
        )
        store.ensure_bucket()
        return store
    return FileStore(settings.vault_path, clock)


INDEX_SUBJECT = "index:search"


@dataclass(frozen=True, slots=True)
class Services:
    """The collaborators every entry point shares."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    writer: Writer
    reader: Reader
    keyring: Keyring
    vault: Vault
    meta_ids: MetaIdIndex
    accounts: AccountService
    capture: Capture
    importer: ChatImporter
    graph: GraphClient
    media: MediaFetcher
    identity: IdentityService
    approvals: ApprovalService
    grants: GrantService
    audit: AuditLog
    record_reader: RecordReader
    records: Records
    search: Search
    archive_search: ArchiveSearch
    conversations: Conversations
    lexicon: Lexicon
    key_rotation: KeyRotation
    consent: ConsentLedger
    templates: TemplateRegistry
    policies: SendPolicies
    outbox: Outbox
    dispatcher: Dispatcher
    reactions: Reactions

    async def close(self) -> None:
        """Finish pending journal and audit writes, then release connections."""
        await self.capture.close()
        await self.audit.close()
        await self.graph.aclose()
        await self.writer.close()
        await self.reader.close()
        await self.engine.dispose()


def freeze_startup_heap() -> None:
    """Keep what start-up built out of the garbage collector's full passes.

    Those objects (modules, the application, the services) live as long as the
    process, yet a full collection visits every one: in the server, about
    165,000 objects took 100 to 170 ms a pass, every few seconds under webhook
    load, and no request moved meanwhile. Call once a long-running process has
    opened its services.
    """
    gc.collect()  # leave no start-up garbage behind where it can never be collected
    gc.freeze()


async def open_services(settings: Settings, clock: Clock | None = None) -> Services:
    """Wire the system described by ``settings`` (the schema must be current)."""
    clock = clock or SystemClock()
    prepare_private_paths(settings)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    keyring = open_keyring(settings, clock)
    vault = Vault(open_store(settings, clock), keyring, clock)
    async with sessions() as session, session.begin():
        # Subject keys: they survive root rotation unchanged.
        _, index_key = await keyring.key_for(session, INDEX_SUBJECT)
        _, meta_id_key = await keyring.key_for(session, META_ID_SUBJECT)
        _, binding_key = await keyring.key_for(session, BINDING_SUBJECT)
    index = BlindIndex(index_key)
    meta_ids = MetaIdIndex(meta_id_key)
    binding = RecordBinding(binding_key)
    records = timedelta(days=settings.record_retention_days)
    retention = Retention(journal=timedelta(days=settings.journal_retention_days), records=records)
    writer = Writer(sessions, settings.database_url)
    reader = Reader(sessions, settings.database_url)
    audit = AuditLog(
        sessions, vault, keyring, clock, anchor_seconds=settings.audit_anchor_seconds, writer=writer
    )
    accounts = AccountService(keyring, index, clock, sessions=sessions, writer=writer, audit=audit)
    capture = Capture(
        vault,
        sessions,
        accounts,
        index,
        meta_ids,
        clock,
        retention,
        audit,
        writer=writer,
        binding=binding,
    )
    accounts.on_register(capture.refresh_secrets)
    records_reader = RecordReader(vault, binding, IntegrityAlarm(audit))
    # The embedded sandbox (the demo, tests) serves media from loopback.
    hosts = META_MEDIA_HOSTS + (LOOPBACK_HOSTS if settings.embedded else ())
    graph = GraphClient(settings.graph_base_url, download_hosts=hosts)
    identity = IdentityService(keyring, clock, writer=writer, audit=audit, sessions=sessions)
    approvals = ApprovalService(clock, sessions=sessions)
    conversations = Conversations(records_reader)
    search = Search(records_reader, index, reader)
    lexicon = Lexicon(clock, sessions, writer, audit)
    archive = Records(
        sessions,
        records_reader,
        conversations,
        audit,
        vault,
        contact_token=index.contact_token,
        meta_id_token=meta_ids.token,
    )
    consent = ConsentLedger(clock, sessions, writer, audit, vault, capture, retention=records)
    templates = TemplateRegistry(clock, sessions, writer, audit)
    snapshots = SnapshotLoader(clock, consent, templates)
    outbox = Outbox(
        clock, sessions, writer, audit, vault, capture, index, snapshots, retain_for=records
    )
    dispatcher = Dispatcher(
        clock,
        sessions,
        writer,
        audit,
        outbox,
        snapshots,
        accounts,
        capture,
        meta_ids,
        graph,
        consent,
    )
    reactions = Reactions(clock, sessions, writer, audit, records_reader, consent, templates)
    return Services(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=sessions,
        writer=writer,
        reader=reader,
        keyring=keyring,
        vault=vault,
        meta_ids=meta_ids,
        accounts=accounts,
        capture=capture,
        importer=ChatImporter(capture, vault, sessions, clock, records, writer, audit),
        graph=graph,
        media=MediaFetcher(graph, vault, writer, accounts, clock, retention=records),
        identity=identity,
        approvals=approvals,
        grants=GrantService(identity, approvals, writer=writer, audit=audit, sessions=sessions),
        audit=audit,
        record_reader=records_reader,
        records=archive,
        search=search,
        archive_search=ArchiveSearch(search, archive, audit, lexicon.active_terms),
        conversations=conversations,
        lexicon=lexicon,
        key_rotation=KeyRotation(keyring, sessions, writer, audit),
        consent=consent,
        templates=templates,
        policies=SendPolicies(clock, sessions, writer, audit),
        outbox=outbox,
        dispatcher=dispatcher,
        reactions=reactions,
    )
