"""Typed, frozen settings read once from ``STRONGROOM_*`` variables.

``load_settings`` is the only place that reads the environment. A malformed or
missing value raises ``SettingsError`` naming the setting and the problem, which
the CLI prints as one line.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

Mode = Literal["embedded", "production"]

# Every setting Strongroom reads, with a one-line meaning; the README mirrors it.
SETTINGS_HELP: dict[str, str] = {
    "STRONGROOM_MODE": "`embedded` (default: local evaluation) or `production`",
    "STRONGROOM_DATA_DIR": "embedded data directory (default `./var`)",
    "STRONGROOM_DATABASE_URL": "SQLAlchemy URL; default SQLite file in the data directory",
    "STRONGROOM_VAULT_URL": "`file:///path` or `s3://bucket`; default `file://<data dir>/vault`",
    "STRONGROOM_S3_ENDPOINT": "S3/MinIO endpoint `host:port` (for `s3://`)",
    "STRONGROOM_S3_ACCESS_KEY": "S3 access key (for `s3://`)",
    "STRONGROOM_S3_SECRET_KEY": "S3 secret key (for `s3://`)",
    "STRONGROOM_S3_SECURE": "use TLS to the S3 endpoint: `true` (default) or `false`",
    "STRONGROOM_S3_CA_BUNDLE": "PEM file of CAs that sign the S3 endpoint's certificate",
    "STRONGROOM_S3_REGION": "S3 region (optional)",
    "STRONGROOM_MASTER_KEY": "root key: 32 bytes as base64 or 64 hex digits",
    "STRONGROOM_MASTER_KEY_FILE": "file holding the root key (default `<data dir>/master.key`)",
    "STRONGROOM_LOG_LEVEL": "`debug`, `info` (default), `warning` or `error`",
    "STRONGROOM_JOURNAL_RETENTION_DAYS": "how long raw webhook bodies are kept (default 30)",
    "STRONGROOM_RECORD_RETENTION_DAYS": "default retention of records (default 2557: 7 years)",
    "STRONGROOM_GRAPH_BASE_URL": "Graph API base URL (default `https://graph.facebook.com`)",
    "STRONGROOM_AUDIT_ANCHOR_SECONDS": "how often the worker checkpoints new audit events "
    "in the vault (default 10 seconds)",
    "STRONGROOM_PUBLIC_URL": "the `https://…` address clients reach the service at (production)",
    "STRONGROOM_HTTP_HEADER_TIMEOUT": "seconds to send a request's headers (default 10)",
    "STRONGROOM_HTTP_BODY_TIMEOUT": "seconds to send a request's body (default 60)",
    "STRONGROOM_HTTP_MAX_CONNECTIONS": "open connections per process before 503 (default 1000)",
    "STRONGROOM_TRUSTED_PROXIES": "addresses or CIDR networks of the reverse proxies whose "
    "X-Forwarded-For and -Proto are believed, comma-separated (default none)",
}
SETTING_NAMES: tuple[str, ...] = tuple(SETTINGS_HELP)

_LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(Exception):
    """A setting is missing or malformed."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Connection to an S3-compatible store with Object Lock."""

    bucket: str
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    ca_bundle: Path | None
    region: str | None

    def __repr__(self) -> str:
        return f"S3Settings(bucket={self.bucket!r}, endpoint={self.endpoint!r}, secret=***)"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything Strongroom is configured with."""

    mode: Mode
    data_dir: Path
    database_url: str
    vault_url: str
    s3: S3Settings | None
    master_key: bytes | None
    master_key_file: Path
    log_level: str
    journal_retention_days: int
    record_retention_days: int
    graph_base_url: str
    audit_anchor_seconds: int
    public_url: str | None
    http_header_timeout: float
    http_body_timeout: float
    http_max_connections: int
    trusted_proxies: tuple[str, ...]

    @property
    def embedded(self) -> bool:
        """True in the local evaluation mode."""
        return self.mode == "embedded"

    @property
    def https(self) -> bool:
        """Clients reach the service over TLS (a proxy terminates it): cookies are
        Secure and responses carry HSTS."""
        return self.public_url is not None and self.public_url.startswith("https://")

    @property
    def vault_path(self) -> Path:
        """Root directory of a ``file://`` vault."""
        return Path(urlsplit(self.vault_url).path)

    def __repr__(self) -> str:
        return (
            f"Settings(mode={self.mode!r}, data_dir={str(self.data_dir)!r}, "
            f"vault_url={self.vault_url!r}, master_key=***)"
        )


def parse_root_key(text: str, name: str = "STRONGROOM_MASTER_KEY") -> bytes:
    """Decode a 32-byte root key given as base64 or 64 hex digits."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        raise SettingsError(name, "not base64 or hex") from None
    if len(key) != 32:
        raise SettingsError(name, f"must decode to 32 bytes, got {len(key)}")
    return key


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(name, f"expected true or false, got {raw!r}")


def _days(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 36500:
        raise SettingsError(name, f"expected a number of days from 1 to 36500, got {raw!r}")
    return int(raw)


def _whole_seconds(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 86400:
        raise SettingsError(name, f"expected a number of seconds from 1 to 86400, got {raw!r}")
    return int(raw)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise SettingsError(name, f"expected a number of seconds from 0.1 to 3600, got {raw!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise SettingsError(name, f"expected a whole number from 1 to 1000000, got {raw!r}")
    return int(raw)


def _public_url(env: Mapping[str, str], production: bool) -> str | None:
    name = "STRONGROOM_PUBLIC_URL"
    raw = env.get(name, "").strip()
    if not raw:
        if production:
            raise SettingsError(name, "must be set in production mode, as https://<host>")
        return None
    url = _http_url(env, name, raw)
    parts = urlsplit(url)
    if production and parts.scheme != "https":
        raise SettingsError(name, f"must be an https:// URL in production mode, got {raw!r}")
    if parts.path or parts.query or parts.fragment:
        raise SettingsError(name, f"expected scheme and host only, got {raw!r}")
    return url


def _trusted_proxies(env: Mapping[str, str]) -> tuple[str, ...]:
    name = "STRONGROOM_TRUSTED_PROXIES"
    proxies = []
    for item in env.get(name, "").split(","):
        if not item.strip():
            continue
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise SettingsError(
                name, f"expected IP addresses or CIDR networks, got {item.strip()!r}"
            ) from None
        proxies.append(str(network))
    return tuple(proxies)


def _http_url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(name, f"expected an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _database_url(raw: str) -> str:
    name = "STRONGROOM_DATABASE_URL"
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SettingsError(name, "not a database URL") from None
    driver = url.drivername
    if driver in ("sqlite", "sqlite+aiosqlite"):
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if driver in ("postgresql", "postgres", "postgresql+asyncpg"):
        if not url.host and not url.query.get("host"):
            raise SettingsError(name, "PostgreSQL URL has no host")
        return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise SettingsError(name, f"unsupported database {driver!r} (use sqlite or postgresql)")


def _s3(env: Mapping[str, str], bucket: str) -> S3Settings:
    def required(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise SettingsError(name, "required for an s3:// vault")
        return value

    endpoint = required("STRONGROOM_S3_ENDPOINT")
    if "://" in endpoint:
        endpoint = urlsplit(endpoint).netloc
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError("STRONGROOM_S3_ENDPOINT", "expected host:port")
    ca = env.get("STRONGROOM_S3_CA_BUNDLE", "").strip()
    if ca and not Path(ca).is_file():
        raise SettingsError("STRONGROOM_S3_CA_BUNDLE", f"no such file {ca}")
    return S3Settings(
        bucket=bucket,
        endpoint=endpoint,
        access_key=required("STRONGROOM_S3_ACCESS_KEY"),
        secret_key=required("STRONGROOM_S3_SECRET_KEY"),
        secure=_bool(env, "STRONGROOM_S3_SECURE", True),
        ca_bundle=Path(ca) if ca else None,
        region=env.get("STRONGROOM_S3_REGION", "").strip() or None,
    )


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build settings from ``env``; raise ``SettingsError`` on the first bad value."""
    for key in env:
        if (
            key.startswith("STRONGROOM_")
            and key not in SETTINGS_HELP
            and not key.startswith("STRONGROOM_TEST_")
        ):
            raise SettingsError(key, "unknown setting")

    mode = env.get("STRONGROOM_MODE", "embedded").strip().lower()
    if mode not in ("embedded", "production"):
        raise SettingsError("STRONGROOM_MODE", f"expected embedded or production, got {mode!r}")
    production = mode == "production"

    def explicit(name: str) -> str:
        value = env.get(name, "").strip()
        if production and not value:
            raise SettingsError(name, "must be set explicitly in production mode")
        return value

    data_dir = Path(env.get("STRONGROOM_DATA_DIR", "").strip() or "./var").resolve()

    db_raw = explicit("STRONGROOM_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir}/strongroom.db"
    database_url = _database_url(db_raw)

    vault_url = explicit("STRONGROOM_VAULT_URL") or f"file://{data_dir}/vault"
    parts = urlsplit(vault_url)
    s3: S3Settings | None = None
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise SettingsError("STRONGROOM_VAULT_URL", "file:// URLs need an absolute path")
    elif parts.scheme == "s3":
        if not parts.netloc or parts.path not in ("", "/"):
            raise SettingsError("STRONGROOM_VAULT_URL", "expected s3://bucket")
        s3 = _s3(env, parts.netloc)
    else:
        raise SettingsError(
            "STRONGROOM_VAULT_URL", f"unknown scheme {parts.scheme!r} (use file:// or s3://)"
        )

    key_text = env.get("STRONGROOM_MASTER_KEY", "").strip()
    key_file_raw = env.get("STRONGROOM_MASTER_KEY_FILE", "").strip()
    if production and not key_text and not key_file_raw:
        raise SettingsError(
            "STRONGROOM_MASTER_KEY", "set it or STRONGROOM_MASTER_KEY_FILE in production mode"
        )
    if key_text and key_file_raw:
        raise SettingsError("STRONGROOM_MASTER_KEY", "set it or the key file, not both")
    master_key = parse_root_key(key_text) if key_text else None
    master_key_file = Path(key_file_raw).resolve() if key_file_raw else data_dir / "master.key"
    if production and key_file_raw and not master_key_file.is_file():
        raise SettingsError("STRONGROOM_MASTER_KEY_FILE", f"no such file {master_key_file}")

    log_level = env.get("STRONGROOM_LOG_LEVEL", "info").strip().lower()
    if log_level not in _LOG_LEVELS:
        raise SettingsError("STRONGROOM_LOG_LEVEL", f"expected one of {', '.join(_LOG_LEVELS)}")

    return Settings(
        journal_retention_days=_days(env, "STRONGROOM_JOURNAL_RETENTION_DAYS", 30),
        record_retention_days=_days(env, "STRONGROOM_RECORD_RETENTION_DAYS", 2557),
        graph_base_url=_http_url(env, "STRONGROOM_GRAPH_BASE_URL", "https://graph.facebook.com"),
        audit_anchor_seconds=_whole_seconds(env, "STRONGROOM_AUDIT_ANCHOR_SECONDS", 10),
        public_url=_public_url(env, production),
        http_header_timeout=_seconds(env, "STRONGROOM_HTTP_HEADER_TIMEOUT", 10.0),
        http_body_timeout=_seconds(env, "STRONGROOM_HTTP_BODY_TIMEOUT", 60.0),
        http_max_connections=_count(env, "STRONGROOM_HTTP_MAX_CONNECTIONS", 1000),
        trusted_proxies=_trusted_proxies(env),
        mode="production" if production else "embedded",
        data_dir=data_dir,
        database_url=database_url,
        vault_url=vault_url,
        s3=s3,
        master_key=master_key,
        master_key_file=master_key_file,
        log_level=log_level,
    )
