"""A real OCI registry (Debian's docker-registry) for tests, inside a network namespace.

The registry listens on 127.0.0.1:5000 of a namespace the test creates, never in the root one.
It serves TLS with a certificate from a throw-away CA and wants a password (htpasswd, bcrypt),
so tests exercise the verified, authenticated path that real registries use: skopeo gets the
CA through cert_dir and the password through an auth file. Its access log counts requests.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime
import ipaddress
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.daemon import kill_netns_processes

HOST = "127.0.0.1:5000"
USER, PASSWORD = "volant", "test-only-password"


@dataclass(frozen=True)
class Registry:
    ns: str
    host: str
    cert_dir: Path  # ca.crt, as skopeo's --cert-dir wants it
    authfile: Path
    log: Path
    data: Path

    def push(self, layout: Path, tag: str, repo: str) -> str:
        """Copy layout:tag (an image or a whole index) to HOST/repo; return the digest of the
        manifest or index the registry stores."""
        digest_file = self.log.parent / f"digest-{secrets.token_hex(4)}"
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "skopeo", "copy", "--quiet", "--all",
             f"--dest-cert-dir={self.cert_dir}", f"--dest-authfile={self.authfile}",
             f"--digestfile={digest_file}", f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}"],
            check=True, capture_output=True,
        )  # fmt: skip
        return digest_file.read_text().strip()

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request the registry has answered so far."""
        text = self.log.read_text(errors="replace")
        return re.findall(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/', text)

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.data / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def _bcrypt(password: str) -> str:
    libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt"))
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt_gensalt.restype = ctypes.c_char_p
    salt = libcrypt.crypt_gensalt(b"$2b$", 5, None, 0)
    return bytes(libcrypt.crypt(password.encode(), salt)).decode()


def _certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "volant test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (where / "ca").mkdir()
    ca_path, cert_path, key_path = (
        where / "ca" / "ca.crt",
        where / "server.crt",
        where / "server.key",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def _config(where: Path, data: Path, cert: Path, key: Path, htpasswd: Path) -> Path:
    # JSON is YAML: the registry reads this as its config.yml.
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(data)}},
        "http": {"addr": HOST, "tls": {"certificate": str(cert), "key": str(key)}},
        "auth": {"htpasswd": {"realm": "volant-test", "path": str(htpasswd)}},
    }
    path = where / "config.yml"
    path.write_text(json.dumps(config))
    return path


def _wait_listening(ns: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        probe = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
             f"https://{HOST}/v2/"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.stdout == "401":
            return
        time.sleep(0.1)
    raise RuntimeError("docker-registry did not answer within 20 s")


@contextmanager
def serving_registry(where: Path) -> Iterator[Registry]:
    """Start a registry in a new network namespace; stop it and delete the namespace after."""
    ns = f"volant-oci-{secrets.token_hex(3)}"
    data = where / "data"
    data.mkdir()
    _ca, cert, key = _certificates(where)
    htpasswd = where / "htpasswd"
    htpasswd.write_text(f"{USER}:{_bcrypt(PASSWORD)}\n")
    authfile = where / "auth.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {HOST: {"auth": token}}}))
    config = _config(where, data, cert, key, htpasswd)
    log = where / "registry.log"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "docker-registry", "serve", str(config)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait_listening(ns, proc, log)
            yield Registry(ns, HOST, where / "ca", authfile, log, data)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        # A volantd started in this namespace leaves its dnsmasq (it outlives volantd, as VMs do).
        kill_netns_processes(ns)
        subprocess.run(["ip", "netns", "del", ns], check=False)
