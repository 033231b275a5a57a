"""Settings: defaults, production strictness, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import SETTING_NAMES, SettingsError, load_settings

KEY_HEX = "11" * 32


def test_embedded_defaults_need_nothing(tmp_path: Path) -> None:
    settings = load_settings({"STRONGROOM_DATA_DIR": str(tmp_path)})
    assert settings.embedded
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/strongroom.db"
    assert settings.vault_url == f"file://{tmp_path}/vault"
    assert settings.master_key_file == tmp_path / "master.key"
    assert settings.master_key is None


def test_default_data_dir_is_var() -> None:
    assert load_settings({}).data_dir == Path("./var").resolve()


def test_production_with_everything_explicit(tmp_path: Path) -> None:
    env = {
        "STRONGROOM_MODE": "production",
        "STRONGROOM_DATABASE_URL": "postgresql://sr@db:5432/strongroom",
        "STRONGROOM_VAULT_URL": "s3://archive",
        "STRONGROOM_S3_ENDPOINT": "https://minio:9000",
        "STRONGROOM_S3_ACCESS_KEY": "ak",
        "STRONGROOM_S3_SECRET_KEY": "sk",
        "STRONGROOM_MASTER_KEY": KEY_HEX,
        "STRONGROOM_PUBLIC_URL": "https://archive.example.com/",
    }
    settings = load_settings(env)
    assert settings.public_url == "https://archive.example.com"
    assert settings.https
    assert settings.database_url == "postgresql+asyncpg://sr@db:5432/strongroom"
    assert settings.s3 is not None
    assert (settings.s3.bucket, settings.s3.endpoint, settings.s3.secure) == (
        "archive",
        "minio:9000",
        True,
    )
    assert settings.master_key == bytes.fromhex(KEY_HEX)
    assert "sk" not in repr(settings.s3)
    assert KEY_HEX not in repr(settings)


PRODUCTION = {
    "STRONGROOM_MODE": "production",
    "STRONGROOM_DATABASE_URL": "postgresql://sr@db/strongroom",
    "STRONGROOM_VAULT_URL": "file:///srv/vault",
    "STRONGROOM_MASTER_KEY": KEY_HEX,
    "STRONGROOM_PUBLIC_URL": "https://archive.example.com",
}


@pytest.mark.parametrize(
    "missing",
    [
        "STRONGROOM_DATABASE_URL",
        "STRONGROOM_VAULT_URL",
        "STRONGROOM_MASTER_KEY",
        "STRONGROOM_PUBLIC_URL",
    ],
)
def test_production_refuses_implicit_settings(missing: str) -> None:
    env = dict(PRODUCTION)
    del env[missing]
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert caught.value.name == missing


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("STRONGROOM_MASTER_KEY", "not-a-key!", "base64"),
        ("STRONGROOM_MASTER_KEY", "AAAA", "32 bytes"),
        ("STRONGROOM_VAULT_URL", "ftp://x/y", "unknown scheme"),
        ("STRONGROOM_VAULT_URL", "file://relative", "absolute path"),
        ("STRONGROOM_DATABASE_URL", "not a url", "not a database URL"),
        ("STRONGROOM_DATABASE_URL", "mysql://x/y", "unsupported database"),
        ("STRONGROOM_MODE", "staging", "embedded or production"),
        ("STRONGROOM_LOG_LEVEL", "loud", "one of"),
        ("STRONGROOM_S3_SECURE", "maybe", "true or false"),
        ("STRONGROOM_VAUL_URL", "x", "unknown setting"),
        ("STRONGROOM_PUBLIC_URL", "archive.example.com", "http(s) URL"),
        ("STRONGROOM_PUBLIC_URL", "https://archive.example.com/app", "scheme and host only"),
        ("STRONGROOM_HTTP_HEADER_TIMEOUT", "0", "seconds from 0.1 to 3600"),
        ("STRONGROOM_HTTP_BODY_TIMEOUT", "nan", "seconds from 0.1 to 3600"),
        ("STRONGROOM_HTTP_BODY_TIMEOUT", "soon", "seconds from 0.1 to 3600"),
        ("STRONGROOM_HTTP_MAX_CONNECTIONS", "0", "whole number"),
        ("STRONGROOM_TRUSTED_PROXIES", "10.0.0.1,proxy", "got 'proxy'"),
        ("STRONGROOM_TRUSTED_PROXIES", "*", "IP addresses or CIDR networks"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, problem: str) -> None:
    env = {name: value}
    if name == "STRONGROOM_S3_SECURE":
        env |= {
            "STRONGROOM_VAULT_URL": "s3://b",
            "STRONGROOM_S3_ENDPOINT": "h:9000",
            "STRONGROOM_S3_ACCESS_KEY": "a",
            "STRONGROOM_S3_SECRET_KEY": "s",
        }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert problem in message
    assert "\n" not in message


def test_production_is_reached_over_tls_only() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(PRODUCTION | {"STRONGROOM_PUBLIC_URL": "http://archive.example.com"})
    assert str(caught.value) == (
        "STRONGROOM_PUBLIC_URL: must be an https:// URL in production mode, "
        "got 'http://archive.example.com'"
    )


def test_https_follows_the_public_url() -> None:
    assert not load_settings({}).https
    assert not load_settings({"STRONGROOM_PUBLIC_URL": "http://127.0.0.1:8000"}).https
    assert load_settings({"STRONGROOM_PUBLIC_URL": "https://127.0.0.1:8443"}).https


def test_transport_bounds_have_defaults_and_take_fractions() -> None:
    defaults = load_settings({})
    assert (defaults.http_header_timeout, defaults.http_body_timeout) == (10.0, 60.0)
    assert defaults.http_max_connections == 1000
    tuned = load_settings(
        {"STRONGROOM_HTTP_HEADER_TIMEOUT": "0.5", "STRONGROOM_HTTP_MAX_CONNECTIONS": "64"}
    )
    assert (tuned.http_header_timeout, tuned.http_max_connections) == (0.5, 64)


def test_no_proxy_is_trusted_unless_named() -> None:
    assert load_settings({}).trusted_proxies == ()
    named = load_settings({"STRONGROOM_TRUSTED_PROXIES": " 10.213.47.10, 192.168.0.0/24 ,::1"})
    assert named.trusted_proxies == ("10.213.47.10/32", "192.168.0.0/24", "::1/128")


def test_s3_vault_needs_its_credentials() -> None:
    with pytest.raises(SettingsError, match="STRONGROOM_S3_ENDPOINT: required"):
        load_settings({"STRONGROOM_VAULT_URL": "s3://bucket"})


def test_every_setting_is_documented_in_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in SETTING_NAMES:
        assert f"`{name}`" in readme, name


def test_audit_anchor_seconds() -> None:
    assert load_settings({}).audit_anchor_seconds == 10
    assert load_settings({"STRONGROOM_AUDIT_ANCHOR_SECONDS": "86400"}).audit_anchor_seconds == 86400
    for bad in ("0", "1.5", "86401", "soon"):
        with pytest.raises(SettingsError, match="STRONGROOM_AUDIT_ANCHOR_SECONDS: expected"):
            load_settings({"STRONGROOM_AUDIT_ANCHOR_SECONDS": bad})
