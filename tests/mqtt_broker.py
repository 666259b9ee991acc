"""A real mosquitto broker for tests, on a free port, with a generated config.

Reusable from any test (alerts, streams)::

    from tests.mqtt_broker import Mosquitto, BrokerAuth, make_pki

    with Mosquitto(tmp_path) as broker:            # anonymous
        ... broker.port ...

    broker = Mosquitto(tmp_path, users={"alice": "pw"}, acl="user alice\\ntopic readwrite #\\n")
    broker.start(); broker.stop(); broker.start()  # same port, same persistence file

    pki = make_pki(tmp_path / "pki")               # CA, server cert (localhost), client cert
    Mosquitto(tmp_path, tls=pki, require_client_cert=True)

Variants: anonymous (default), password (``users=``, hashed with ``mosquitto_passwd``),
TLS (``tls=`` a `Pki`; the broker then listens with TLS only), ACL (``acl=`` the
text of an ACL file). ``persistence=True`` keeps sessions and queued QoS 1 messages
across `stop`/`start`, so a persistent subscriber receives what was published while
the broker or the subscriber was away. The broker's log is ``broker.log_path``.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _cert(subject_cn: str, issuer_name, issuer_key, pub_key, *, ca: bool, san: list[str] | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.now(_dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(pub_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub_key), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if san else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if san:
        import ipaddress

        names = []
        for s in san:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                names.append(x509.DNSName(s))
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, ca_name: str = "flamingo-edge test CA") -> Pki:
    """Generate a CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def dump(path: Path, obj) -> Path:
        if hasattr(obj, "private_bytes"):
            data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        path.write_bytes(data)
        os.chmod(path, 0o600)
        return path

    ca_key = key()
    ca = _cert(ca_name, None, ca_key, ca_key.public_key(), ca=True)
    sk, ck = key(), key()
    server = _cert("localhost", ca.subject, ca_key, sk.public_key(), ca=False, san=["localhost", "127.0.0.1"])
    client = _cert("flamingo-edge-client", ca.subject, ca_key, ck.public_key(), ca=False)
    return Pki(
        ca_cert=dump(directory / "ca.crt", ca), ca_key=dump(directory / "ca.key", ca_key),
        server_cert=dump(directory / "server.crt", server), server_key=dump(directory / "server.key", sk),
        client_cert=dump(directory / "client.crt", client), client_key=dump(directory / "client.key", ck),
    )


class Mosquitto:
    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: Pki | None = None,
        require_client_cert: bool = False,
        persistence: bool = True,
        port: int | None = None,
    ) -> None:
        self.dir = Path(directory) / f"mosquitto-{os.getpid()}-{time.monotonic_ns()}"
        self.dir.mkdir(parents=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.users = users or {}
        self.tls = tls
        self.log_path = self.dir / "mosquitto.log"
        self.conf_path = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users or require_client_cert else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "max_queued_messages 10000",
            # as root, mosquitto would drop to user "mosquitto", which cannot read pytest's tmp dirs
            f"user {getpass.getuser()}",
        ]
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for u, p in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), u, p], check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        if tls is not None:
            lines += [f"cafile {tls.ca_cert}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
            if require_client_cert:
                lines += ["require_certificate true", "use_identity_as_username true"]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
