"""Runs Azurite, Microsoft's Azure Storage emulator (blobs and tables), on free loopback ports for
the test suite: over HTTP with the account key, or (`oauth=True`) over HTTPS with a throwaway
self-signed certificate, accepting Entra ID bearer tokens too."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import random
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.core.credentials import AccessToken

from tests.support import ROOT

ACCOUNT = "devstoreaccount1"
# The emulator's well-known development key (public, documented by Microsoft).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def stop_process(process: subprocess.Popen) -> None:
    """Ask a server process to stop; kill it if it has not within ten seconds."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports free now, for a server that takes a run of
    ports (scripts/azurite.sh takes three). Chosen below the system's ephemeral range: a port in it
    can be handed to any outgoing connection between this check and the server's listen."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        first = random.randrange(20000, ephemeral_low - count)
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free loopback ports between 20000 and {ephemeral_low}")


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port that another process (this one) listens on, while in use."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


class Azurite:
    def __init__(self, *, oauth: bool = False) -> None:
        """`oauth`: serve HTTPS with a self-signed certificate for 127.0.0.1 (its path is `ca_path`:
        the SDK must trust it) and accept bearer tokens as `--oauth basic` does (issuer, audience
        and lifetime are checked, the signature is not)."""
        binary = ROOT / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run `npm ci` in {ROOT}")
        self.port = free_port_run(3)
        self.table_port, queue_port = self.port + 1, self.port + 2
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        workdir = Path(self._workdir.name)
        self.scheme = "https" if oauth else "http"
        self.ca_path: Path | None = None
        extra: list[str] = []
        if oauth:
            self.ca_path, key_path = self_signed_certificate(workdir)
            extra = ["--oauth", "basic", "--cert", str(self.ca_path), "--key", str(key_path)]
        self._log = open(workdir / "azurite.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(self.table_port),
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                str(queue_port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._workdir.name,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                for port in (self.port, self.table_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Azurite did not start") from None
                time.sleep(0.1)

    @property
    def blob_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def table_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.table_port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob_endpoint};TableEndpoint={self.table_endpoint};"
        )

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()
        self._workdir.cleanup()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A fresh key and a self-signed certificate for 127.0.0.1 and localhost, valid for a day, as
    PEM files in `directory`: (certificate, key). The certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Azurite test 127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeEntraCredential:
    """An azure-core TokenCredential minting the JWTs Azurite's `--oauth basic` accepts: an Entra
    issuer (https://sts.windows.net/<tenant>/), the storage audience, iat/nbf/exp, and the oid and
    tid that Get User Delegation Key signs its key over. Azurite checks no signature; this one is
    an HMAC with a throwaway secret only so that the token is well formed.

    `audience` and `lifetime` can be set to make tokens Azurite must refuse; `scopes` records what
    the SDK asked for."""

    def __init__(
        self,
        *,
        audience: str = "https://storage.azure.com",
        lifetime: timedelta = timedelta(hours=1),
        object_id: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self.audience = audience
        self.lifetime = lifetime
        self.object_id = object_id or str(uuid.uuid4())
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        now = int(time.time())
        expires = now + int(self.lifetime.total_seconds())
        claims = {
            "aud": self.audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": expires,
            "oid": self.object_id,
            "tid": self.tenant_id,
            "sub": self.object_id,
            "scp": "user_impersonation",
            "ver": "1.0",
        }
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        signature = hmac.new(b"not-a-secret", f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return AccessToken(f"{header}.{payload}.{_b64url(signature)}", expires)

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeEntraCredential:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass
