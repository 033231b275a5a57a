"""Production transport: Strongroom behind the TLS-terminating proxy.

Debian's Caddy runs the repository's site configuration (deploy/strongroom.caddy,
which deploy/Caddyfile imports) on loopback, with Caddy's own local CA instead
of Let's Encrypt, in front of a real ``strongroom serve`` whose public URL is
that https:// address. Caddy needs no network and writes only in a temporary
directory. The tests skip when Caddy is missing, unless
``STRONGROOM_TEST_REQUIRE_CADDY=1``.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import STRONGROOM, Server, clean_env, free_port
from tests.e2e.test_auth import _password_step

CADDY = Path("/usr/bin/caddy")
REQUIRE_CADDY = os.environ.get("STRONGROOM_TEST_REQUIRE_CADDY") == "1"
DEPLOY = Path(__file__).parents[2] / "deploy"
HSTS = "max-age=31536000; includeSubDomains"


def _need_caddy() -> None:
    if not CADDY.exists():
        if REQUIRE_CADDY:
            pytest.fail(f"Caddy is required here but {CADDY} is missing (apt-get install caddy)")
        pytest.skip(f"{CADDY} is missing")


@dataclass
class Proxy:
    https: str  # https://127.0.0.1:port
    http: str  # http://127.0.0.1:port
    ca: Path  # the local CA's root certificate


def _caddy_env(home: Path) -> dict[str, str]:
    """Caddy's environment: its certificates and state stay under ``home``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Proxy]]:
    _need_caddy()
    root = tmp_path_factory.mktemp("proxy")
    https_port, http_port = free_port(), free_port()
    public = f"https://127.0.0.1:{https_port}"
    server = Server(
        clean_env(STRONGROOM_DATA_DIR=str(root / "data"), STRONGROOM_PUBLIC_URL=public),
        root / "data",
        root / "server.log",
    )
    # The same site block as production; only the certificate's issuer and the
    # ports differ (and nothing is installed in the system's trust store).
    caddyfile = root / "Caddyfile"
    caddyfile.write_text(
        "{\n\tadmin off\n\tskip_install_trust\n"
        f"\thttp_port {http_port}\n\thttps_port {https_port}\n}}\n\n"
        f"127.0.0.1:{https_port} {{\n\ttls internal\n\timport {DEPLOY / 'strongroom.caddy'}\n}}\n"
    )
    home = root / "caddy"
    env = _caddy_env(home) | {"API_UPSTREAM": f"127.0.0.1:{server.port}"}
    log_path = root / "caddy.log"
    caddy: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        server.bootstrap_users()
        with log_path.open("ab") as log:
            caddy = subprocess.Popen(
                [str(CADDY), "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                env=env,
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ca = home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        proxy = Proxy(https=public, http=f"http://127.0.0.1:{http_port}", ca=ca)
        _wait_until_serving(caddy, proxy, log_path)
        yield server, proxy
    finally:
        if caddy is not None:
            caddy.terminate()
            caddy.wait(timeout=10)
        server.close()


def _wait_until_serving(caddy: subprocess.Popen[bytes], proxy: Proxy, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if caddy.poll() is not None:
            raise RuntimeError(f"caddy exited: {log.read_text()[-2000:]}")
        if proxy.ca.exists():
            try:
                with _https(proxy) as client:
                    if client.get("/healthz").status_code == 200:
                        return
            except (httpx.TransportError, OSError):
                pass
        time.sleep(0.1)  # polling another process's start-up, not a clock a test could fake
    raise RuntimeError(f"caddy did not serve: {log.read_text()[-2000:]}")


def _https(proxy: Proxy) -> httpx.Client:
    trust = ssl.create_default_context(cafile=proxy.ca)
    return httpx.Client(base_url=proxy.https, verify=trust, timeout=10, follow_redirects=False)


def test_https_answers_carry_hsts(proxied: tuple[Server, Proxy]) -> None:
    _, proxy = proxied
    with _https(proxy) as client:
        for path in ("/healthz", "/login", "/no-such-page"):
            response = client.get(path)
            assert response.url.scheme == "https"
            assert response.headers.get_list("strict-transport-security") == [HSTS], path


def test_the_session_cookie_is_secure(proxied: tuple[Server, Proxy]) -> None:
    _, proxy = proxied
    with _https(proxy) as client:
        signed_in = _password_step(client, "e2e-officer")
    assert signed_in.status_code == 303, signed_in.text
    cookies = signed_in.headers.get_list("set-cookie")
    session = [c for c in cookies if c.startswith("strongroom_session=")]
    assert session, cookies
    for cookie in cookies:
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict"} <= attributes, cookie


def test_plain_http_is_redirected_to_https(proxied: tuple[Server, Proxy]) -> None:
    _, proxy = proxied
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        for path in ("/login", "/webhooks/whatsapp?hub.mode=subscribe"):
            response = client.get(f"{proxy.http}{path}")
            assert response.status_code in (301, 308), response.text
            # To the same host and path over https; Caddy leaves out its HTTPS
            # port, taking it for the default one (443 in production).
            assert response.headers["location"] == f"https://127.0.0.1{path}"


def test_the_production_caddyfile_adapts(tmp_path: Path) -> None:
    _need_caddy()
    env = _caddy_env(tmp_path) | {
        "PUBLIC_HOST": "archive.example.com",
        "ACME_EMAIL": "ops@example.com",
        "API_UPSTREAM": "api:8000",
    }
    adapted = subprocess.run(
        [str(CADDY), "adapt", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert adapted.returncode == 0, adapted.stderr
    config = json.loads(adapted.stdout)
    assert config["admin"] == {"disabled": True}
    text = adapted.stdout
    assert '"host":["archive.example.com"]' in text
    assert '"dial":"api:8000"' in text
    assert HSTS in text


@pytest.mark.parametrize("public_url", [None, "http://archive.example.com"])
def test_production_refuses_to_start_without_an_https_public_url(
    tmp_path: Path, public_url: str | None
) -> None:
    env = clean_env(
        STRONGROOM_MODE="production",
        STRONGROOM_DATABASE_URL=f"sqlite:///{tmp_path}/strongroom.db",
        STRONGROOM_VAULT_URL=f"file://{tmp_path}/vault",
        STRONGROOM_MASTER_KEY="11" * 32,
    )
    if public_url is not None:
        env["STRONGROOM_PUBLIC_URL"] = public_url
    result = subprocess.run(
        [STRONGROOM, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("strongroom: STRONGROOM_PUBLIC_URL: "), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "strongroom.db").exists()
