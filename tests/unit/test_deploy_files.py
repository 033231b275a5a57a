"""The deployment files, checked without a Docker engine.

What needs an engine (that the image builds, that MinIO starts with TLS, that
`mc` accepts these flags) is not checked here.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from api import settings as settings_module
from api.settings import SETTING_NAMES, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text()

# ${NAME:?message}, ${NAME?message}, ${NAME:-default} or ${NAME-default}; $$ is a literal $.
_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:\?|\?|:-|-)(?P<arg>[^}]*)\}")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER|MASTER_KEY$|TOKEN")


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_TEXT)
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, Any]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _references() -> list[re.Match[str]]:
    return list(_REFERENCE.finditer(COMPOSE_TEXT))


def _interpolate(value: str, fake: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name", "op", "arg")
        if name in fake:
            return fake[name]
        assert op in (":-", "-"), f"{name} is required but the test gave no value"
        return arg

    return _REFERENCE.sub(substitute, value).replace("$$", "$")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


# -- docker-compose.yml ----------------------------------------------------------


def test_compose_has_the_services() -> None:
    assert set(_services()) == {
        "postgres",
        "minio",
        "minio-init",
        "migrate",
        "api",
        "worker",
        "proxy",
    }


def test_every_variable_reference_is_required_or_defaulted() -> None:
    text = COMPOSE_TEXT.replace("$$", "")
    assert text.count("$") == len(_references()), "a $VAR or ${VAR} without :? or :- remains"
    for ref in _references():
        if _SECRET_NAME.search(ref.group("name")):
            assert ref.group("op") == ":?", f"{ref.group('name')} must be required, not defaulted"
            assert ref.group("arg"), f"{ref.group('name')} needs an error message"


def test_every_strongroom_variable_is_a_known_setting() -> None:
    # SETTING_NAMES is the settings module's public list of every variable it reads.
    assert isinstance(settings_module.SETTING_NAMES, tuple)
    used = set(re.findall(r"\bSTRONGROOM_[A-Z0-9_]+", COMPOSE_TEXT))
    assert used
    assert used <= set(SETTING_NAMES), used - set(SETTING_NAMES)


def test_no_literal_secrets() -> None:
    for name, service in _services().items():
        for key, value in (service.get("environment") or {}).items():
            if _SECRET_NAME.search(key):
                assert isinstance(value, str)
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{name}.{key}"
    assert "STRONGROOM_MASTER_KEY" not in _services()["api"]["environment"]
    url = _services()["api"]["environment"]["STRONGROOM_DATABASE_URL"]
    resolved = urlsplit(_interpolate(url, {"POSTGRES_PASSWORD": "from-dot-env"}))
    assert resolved.password == "from-dot-env", "the database password must come from .env"
    for word in ("minioadmin", "changeme", "password123", "hunter2"):
        assert word not in COMPOSE_TEXT.lower()
    # No long random-looking literal (letters and digits mixed) outside ${...} and comments.
    code = re.sub(r"(^|\s)#.*$", "", COMPOSE_TEXT, flags=re.MULTILINE)
    for token in re.findall(r"[A-Za-z0-9+/=_-]{20,}", _REFERENCE.sub("", code)):
        if re.search(r"\d", token) and re.search(r"[A-Za-z]", token):
            assert token in SETTING_NAMES or re.fullmatch(r"[0-9]{4}-[0-9-]+T[0-9-]+Z", token), (
                token
            )


def test_api_worker_and_migrate_share_one_environment() -> None:
    services = _services()
    assert "&strongroom-env" in COMPOSE_TEXT
    env = services["api"]["environment"]
    assert services["worker"]["environment"] == env
    assert services["migrate"]["environment"] == env
    assert env["STRONGROOM_MODE"] == "production"
    assert env["STRONGROOM_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["STRONGROOM_DATABASE_URL"]
    assert env["STRONGROOM_VAULT_URL"] == "s3://strongroom"
    assert env["STRONGROOM_S3_ENDPOINT"] == "minio:9000"
    assert env["STRONGROOM_S3_SECURE"] == "true"
    assert env["STRONGROOM_S3_CA_BUNDLE"].startswith("/run/")
    assert env["STRONGROOM_MASTER_KEY_FILE"] == "/run/secrets/strongroom_master_key"


def test_the_root_key_is_a_docker_secret_from_a_host_file() -> None:
    compose = _compose()
    assert set(compose["secrets"]) == {"strongroom_master_key"}
    assert "file" in compose["secrets"]["strongroom_master_key"]
    for name in ("api", "worker", "migrate"):
        assert _services()[name]["secrets"] == ["strongroom_master_key"]


def test_the_ca_bundle_is_mounted_where_the_setting_points() -> None:
    for name in ("api", "worker", "migrate"):
        service = _services()[name]
        targets = {volume["target"] for volume in service["volumes"]}
        assert service["environment"]["STRONGROOM_S3_CA_BUNDLE"] in targets
    minio = _services()["minio"]
    assert "--certs-dir" in minio["command"]
    certs = minio["command"][minio["command"].index("--certs-dir") + 1]
    assert certs in {v["target"] for v in minio["volumes"] if isinstance(v, dict)}


def test_settings_accept_the_compose_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text("00" * 32)
    key_file.chmod(0o600)
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    fake = {
        "PUBLIC_HOST": "archive.example.com",
        "POSTGRES_PASSWORD": "pw",
        "STRONGROOM_S3_ACCESS_KEY": "strongroom",
        "STRONGROOM_S3_SECRET_KEY": "s3-secret",
    }
    env = {
        key: _interpolate(str(value), fake)
        for key, value in _services()["api"]["environment"].items()
    }
    env["STRONGROOM_MASTER_KEY_FILE"] = str(key_file)
    env["STRONGROOM_S3_CA_BUNDLE"] = str(ca)
    loaded = load_settings(env)
    assert loaded.mode == "production"
    assert loaded.public_url == "https://archive.example.com"
    assert loaded.https
    assert loaded.database_url == "postgresql+asyncpg://strongroom:pw@postgres:5432/strongroom"
    assert loaded.s3 is not None
    assert loaded.s3.bucket == "strongroom"
    assert loaded.s3.endpoint == "minio:9000"
    assert loaded.s3.secure is True
    assert loaded.s3.ca_bundle == ca
    assert loaded.trusted_proxies == (f"{_proxy_address()}/32",)


def test_commands() -> None:
    services = _services()
    all_interfaces = "0.0.0.0"  # noqa: S104 -- inside the container, by design
    assert services["api"]["command"] == ["serve", "--host", all_interfaces, "--port", "8000"]
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["worker"]["healthcheck"] == {"disable": True}


def test_dependencies() -> None:
    services = _services()
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "minio"):
        assert services[name]["healthcheck"]["test"]


def test_data_lives_in_volumes() -> None:
    services = _services()
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "miniodata:/data" in services["minio"]["volumes"]
    named = {v for v in services["proxy"]["volumes"] if isinstance(v, str)}
    assert named == {"caddydata:/data", "caddyconfig:/config"}
    assert set(_compose()["volumes"]) == {"pgdata", "miniodata", "caddydata", "caddyconfig"}


def test_minio_init_makes_a_locked_bucket_without_default_retention() -> None:
    init = _services()["minio-init"]
    assert init["image"].startswith("minio/mc:")
    script = "\n".join(init["command"])
    lines = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    mb = [shlex.split(line) for line in lines if line.startswith("mc mb ")]
    assert len(mb) == 1
    assert "--with-lock" in mb[0]
    assert "--ignore-existing" in mb[0]
    assert mb[0][-1] == "local/strongroom"
    assert "mc alias set local https://minio:9000 " in script
    assert not any(line.startswith("mc retention") for line in lines)
    assert "--default" not in script


def test_images_are_pinned() -> None:
    services = _services()
    assert services["postgres"]["image"] == "postgres:16"
    for name in ("minio", "minio-init"):
        assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT", services[name]["image"]), name


def test_only_expected_ports_are_published() -> None:
    services = _services()
    assert "ports" not in services["postgres"]
    assert all(port.startswith("127.0.0.1:") for port in services["minio"]["ports"])
    # The API only on the compose network; the proxy alone faces the outside.
    assert "ports" not in services["api"]
    assert services["api"]["expose"] == ["8000"]
    assert [p.split("#")[0].strip() for p in services["proxy"]["ports"]] == ["80:80", "443:443"]


# -- the TLS proxy ---------------------------------------------------------------

CADDYFILE = (ROOT / "deploy" / "Caddyfile").read_text()
SITE = (ROOT / "deploy" / "strongroom.caddy").read_text()


def _caddy_lines(text: str) -> list[str]:
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def test_the_proxy_runs_the_repository_caddyfile() -> None:
    proxy = _services()["proxy"]
    assert re.fullmatch(r"caddy:2\.\d+(\.\d+)?", proxy["image"])
    mounts = {v["source"]: v for v in proxy["volumes"] if isinstance(v, dict)}
    for source, target in (
        ("./deploy/Caddyfile", "/etc/caddy/Caddyfile"),
        ("./deploy/strongroom.caddy", "/etc/caddy/strongroom.caddy"),
    ):
        assert mounts[source]["target"] == target
        assert mounts[source]["read_only"] is True
        assert (ROOT / source).is_file()
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert proxy["environment"]["API_UPSTREAM"] == "api:8000"
    assert proxy["cap_drop"] == ["ALL"]
    assert proxy["cap_add"] == ["NET_BIND_SERVICE"]


def _proxy_address() -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(_services()["proxy"]["networks"]["default"]["ipv4_address"])


def test_the_api_believes_forwarded_headers_from_the_proxy_alone() -> None:
    (pool,) = _compose()["networks"]["default"]["ipam"]["config"]
    assert _proxy_address() in ipaddress.ip_network(pool["subnet"])
    # The API is on the same (default) network, and trusts exactly the proxy's address.
    assert "networks" not in _services()["api"]
    env = _services()["api"]["environment"]
    assert env["STRONGROOM_TRUSTED_PROXIES"] == str(_proxy_address())
    fixed = [name for name, s in _services().items() if "networks" in s]
    assert fixed == ["proxy"]


def test_the_proxy_and_the_api_agree_on_the_public_host() -> None:
    proxy_host = _services()["proxy"]["environment"]["PUBLIC_HOST"]
    public_url = _services()["api"]["environment"]["STRONGROOM_PUBLIC_URL"]
    assert public_url == f"https://{proxy_host}"
    assert "{$PUBLIC_HOST}" in CADDYFILE


def test_the_caddyfile_terminates_tls_and_redirects() -> None:
    lines = _caddy_lines(CADDYFILE)
    assert "admin off" in lines
    assert "import strongroom.caddy" in lines
    assert "{$PUBLIC_HOST} {" in lines  # a host name: Caddy gets its certificate and redirects
    # Nothing turns off automatic HTTPS or its http:// to https:// redirect.
    assert "auto_https" not in CADDYFILE + SITE
    assert "http://" not in "\n".join(_caddy_lines(CADDYFILE + SITE))
    site = _caddy_lines(SITE)
    assert 'Strict-Transport-Security "max-age=31536000; includeSubDomains"' in site
    assert "reverse_proxy {$API_UPSTREAM} {" in site
    # X-Forwarded-* from clients are never passed on as they came.
    code = "\n".join(site)
    assert "trusted_proxies" not in code
    assert "header_up" not in code


# -- Dockerfile ------------------------------------------------------------------


def test_dockerfile_base_and_install() -> None:
    instructions = _dockerfile_instructions()
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert bases
    assert all(base == "python:3.11-slim" for base in bases)
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", runs)
    commands = " ".join(rest for keyword, rest in instructions if keyword in ("RUN", "HEALTHCHECK"))
    assert "curl" not in commands
    assert "wget" not in commands


def test_dockerfile_runs_as_non_root() -> None:
    users = [rest for keyword, rest in _dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER instruction"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")


def test_dockerfile_healthcheck_and_entrypoint() -> None:
    instructions = dict(_dockerfile_instructions())
    health = instructions["HEALTHCHECK"]
    assert "urllib.request" in health
    assert "/healthz" in health
    assert instructions["ENTRYPOINT"] == '["strongroom"]'
    assert instructions["CMD"] == '["serve", "--host", "0.0.0.0", "--port", "8000"]'
    port = re.search(r"127\.0\.0\.1:(\d+)/healthz", health)
    assert port is not None
    assert port.group(1) == "8000"


def test_dockerfile_bakes_in_no_secrets() -> None:
    for keyword, rest in _dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"MASTER_KEY|PASSWORD|SECRET|ACCESS_KEY|TOKEN", rest), rest
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.env|\.key|secrets|certs", rest), rest


# -- .dockerignore ---------------------------------------------------------------


def _ignored(path: str) -> bool:
    ignored = False
    for raw in DOCKERIGNORE.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates) or any(
            fnmatch.fnmatch(part, c) for part in parts for c in candidates if "/" not in c
        ):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path", [".env", ".env.production", "secrets/master.key", "certs/ca.crt", ".git/config"]
)
def test_dockerignore_keeps_secrets_out(path: str) -> None:
    assert _ignored(path)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    sources = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            sources.extend(rest.split()[:-1])
    assert "constraints.txt" in sources
    for source in sources:
        assert not _ignored(source), source
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_every_package_in_the_project_is_copied_into_the_image() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        rest.split()[0]
        for keyword, rest in _dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
    }
    assert packages <= copied
    assert project["project"]["readme"] in copied


def test_constraints_pin_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for requirement in project["project"]["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, requirement
