"""A real IMAP server for tests: Debian's dovecot, started as its own process on a free port with a
temporary configuration (one user in a passwd-file, Maildir storage, TLS with a fresh self-signed
certificate). `DovecotServer.available()` says why not when dovecot is not installed."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["DovecotServer"]

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "imap-test-password-1"


class DovecotServer:
    """`with DovecotServer() as imap:` → imap.port, imap.ca_file, imap.maildir (the user's)."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: dovecot's unprivileged login processes must traverse it.
        self.root = Path(tempfile.mkdtemp(prefix="digestd-dovecot-"))
        self.root.chmod(0o755)
        self.port = _free_port()
        self.ca_file = self.root / "cert.pem"
        self.maildir = self.root / "home" / USER / "Maildir"
        self.log = self.root / "dovecot.log"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """None when a test can start dovecot here, else the reason to skip."""
        if not Path(DOVECOT).exists() or not Path("/usr/lib/dovecot/imap").exists():
            return "dovecot is not installed (Debian: apt-get install dovecot-imapd)"
        if os.geteuid() != 0:
            return "dovecot's test instance runs as root (CI does)"
        return None

    def __enter__(self) -> DovecotServer:
        self._write_files()
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self._errors()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen: {self._errors()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _errors(self) -> str:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return log[-2000:]

    def _write_files(self) -> None:
        key, cert = _self_signed()
        (self.root / "key.pem").write_bytes(key)
        (self.root / "key.pem").chmod(0o600)
        self.ca_file.write_bytes(cert)
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        # The mail processes run as an unprivileged user (dovecot refuses uid 0): its home is its own.
        owner = pwd.getpwnam("dovecot")
        home = self.root / "home" / USER
        home.mkdir(parents=True)
        os.chown(home, owner.pw_uid, owner.pw_gid)
        dh = Path("/usr/share/dovecot/dh.pem")
        r = self.root
        (r / "dovecot.conf").write_text(
            f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
log_path = {self.log}
ssl = required
ssl_cert = <{r}/cert.pem
ssl_key = <{r}/key.pem
{f"ssl_dh = <{dh}" if dh.exists() else ""}
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = {owner.pw_uid}
first_valid_gid = {owner.pw_gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={r}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
"""
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)
