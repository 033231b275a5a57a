"""A throwaway S3 server for tests and benchmarks: moto over TLS on loopback.

``moto_s3_server()`` makes a private CA and a server certificate for
127.0.0.1/localhost, starts ``moto.server`` with them as a subprocess on a free
loopback port, waits (bounded) until it answers over verified TLS and stops it
on exit. Nothing listens or connects beyond 127.0.0.1.

    with moto_s3_server() as s3:
        store = S3Store(s3.endpoint, s3.access_key, s3.secret_key, "bucket",
                        ca_bundle=str(s3.ca_bundle), region=s3.region, clock=clock)
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
_START_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class S3Server:
    """Where a running test S3 server answers and how to talk to it."""

    endpoint: str
    secure: bool
    ca_bundle: Path | None
    access_key: str
    secret_key: str
    region: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Write a fresh CA and a server certificate for 127.0.0.1/localhost.

    Returns the paths of the CA certificate, the server certificate and its key.
    """
    now = datetime.now(UTC)
    validity = (now - timedelta(minutes=5), now + timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Strongroom test CA"))
        .issuer_name(_name("Strongroom test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int, context: ssl.SSLContext | None) -> bool:
    conn = (
        http.client.HTTPSConnection(HOST, port, timeout=1, context=context)
        if context
        else http.client.HTTPConnection(HOST, port, timeout=1)
    )
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
    except OSError:
        return False
    finally:
        conn.close()
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _start(
    tls_args: list[str], context: ssl.SSLContext | None, log_path: Path, deadline: float
) -> tuple[subprocess.Popen[bytes], int]:
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port), *tls_args]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None and time.monotonic() < deadline:
            if _answers(port, context):
                return proc, port
            time.sleep(0.1)
        _stop(proc)
        if time.monotonic() >= deadline:
            break
        # It exited early: most likely another process took the port after the probe.
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto S3 server did not answer on {HOST}:\n{tail}")


@contextmanager
def moto_s3_server(*, tls: bool = True, timeout: float = 30.0) -> Iterator[S3Server]:
    """Run moto's S3 server on loopback for the duration of the block.

    With ``tls`` (the default) it serves HTTPS under a fresh CA whose
    certificate is ``S3Server.ca_bundle``; without, plain HTTP and no CA.
    """
    with tempfile.TemporaryDirectory(prefix="strongroom-moto-") as name:
        directory = Path(name)
        ca: Path | None = None
        context: ssl.SSLContext | None = None
        tls_args: list[str] = []
        if tls:
            ca, cert, key = write_tls_files(directory)
            context = ssl.create_default_context(cafile=str(ca))
            tls_args = ["-c", str(cert), "-k", str(key)]
        proc, port = _start(tls_args, context, directory / "moto.log", time.monotonic() + timeout)
        try:
            yield S3Server(
                endpoint=f"{HOST}:{port}",
                secure=tls,
                ca_bundle=ca,
                access_key="strongroom-test",
                secret_key="strongroom-test-secret",
                region="us-east-1",
            )
        finally:
            _stop(proc)
