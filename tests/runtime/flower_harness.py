"""A Flower deployment on loopback for tests and benchmarks: a SuperLink, SuperNodes and
the ``flwr`` CLI, each process in a session of its own, all torn down by process group.

Only 127.0.0.1 is used; ports are chosen free at run time; ``FLWR_HOME`` is a temporary
folder holding the CLI connection (``config.toml``); telemetry and update checks are off.
TLS material (a CA, a server certificate for 127.0.0.1/localhost) and SuperNode
authentication keys (ECDSA P-384, OpenSSH format) are made with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from conftest import TINY  # tests/conftest.py: the shared tiny configuration

# the tiny run every Flower test and the Flower overhead benchmark use (6 Lear roles)
FLOWER_TINY = [
    *(x for x in TINY if not x.startswith(("federation.eval_every", "baselines."))),
    "data.max_clients=6",
    "federation.eval_every=2",
    "baselines.enabled=false",
    "runtime.threads=1",
]

HOST = "127.0.0.1"


def require_flower_cli() -> None:
    """Put Flower's console scripts (beside this interpreter) on PATH, for this process and
    its subprocesses; skip the calling test module if they are not installed."""
    import shutil
    import sys

    import pytest

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("flower-superlink") is None or shutil.which("flower-supernode") is None:
        pytest.skip("Flower's command-line tools are not installed", allow_module_level=True)


class HarnessError(RuntimeError):
    """A Flower process did not start, or a CLI command failed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_tls(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FedGPT test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(pem_key(key))
    paths["key"].chmod(0o600)
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format: (private key, ``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / name, folder / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    priv.chmod(0o600)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return priv, pub


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def _descendants(pids: set[int]) -> set[int]:
    """Every live process below ``pids`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


@dataclass
class Deployment:
    """One SuperLink (optionally TLS + SuperNode authentication) and its SuperNodes."""

    root: Path
    tls: bool = False
    auth: bool = False
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    certs: dict[str, Path] = field(default_factory=dict)
    connection: str = "fedgpt-test"
    ls_every: float = 10.0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "flwr_home"
        self.home.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # the SuperExec looks for new ClientApp/ServerApp tasks this often (default 1 s)
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        }
        if self.tls or self.auth:
            self.certs = make_tls(self.root / "certs")

    # processes ---------------------------------------------------------------------
    def spawn(self, name: str, cmd: list[str]) -> Proc:
        log = self.root / f"{name}.log"
        fh = log.open("wb")
        p = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
        )
        fh.close()
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        cmd = ["flower-superlink", "--host", HOST, "--port", str(self.port)]
        cmd += ["--disable-runtime-dependency-installation"]
        if self.certs:
            cmd += ["--ssl-ca-certfile", str(self.certs["ca"])]
            cmd += ["--ssl-certfile", str(self.certs["cert"])]
            cmd += ["--ssl-keyfile", str(self.certs["key"])]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        proc = self.spawn("superlink", cmd)
        self._write_connection()
        self._wait_healthy(proc, timeout)

    def _write_connection(self) -> None:
        lines = [
            "[superlink]",
            f'default = "{self.connection}"',
            "",
            f"[superlink.{self.connection}]",
            f'address = "{HOST}:{self.port}"',
        ]
        if self.certs:
            lines.append(f'root-certificates = "{self.certs["ca"]}"')
        else:
            lines.append("insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_healthy(self, proc: Proc, timeout: float) -> None:
        scheme = "https" if self.certs else "http"
        ctx = ssl.create_default_context(cafile=str(self.certs["ca"])) if self.certs else None
        url = f"{scheme}://{HOST}:{self.port}/health"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.popen.poll() is not None:
                raise HarnessError(f"SuperLink exited ({proc.popen.returncode}):\n{proc.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise HarnessError(f"SuperLink not healthy at {url} after {timeout:g} s:\n{proc.tail()}")

    def start_supernode(
        self, name: str, node_config: str, key: Path | None = None, extra: list[str] = ()
    ) -> Proc:
        cmd = ["flower-supernode", "--superlink", f"{HOST}:{self.port}"]
        cmd += ["--host", HOST, "--port", str(free_port()), "--node-config", node_config]
        if self.certs:
            cmd += ["--root-certificates", str(self.certs["ca"])]
        else:
            cmd += ["--insecure"]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        return self.spawn(name, [*cmd, *extra])

    def close(self) -> None:
        """SIGTERM then SIGKILL to every process group started here and every process
        below them (Flower's SuperExec runs in a session of its own)."""
        roots = {p.popen.pid for p in self.procs}
        groups = set(roots)  # each was started as the leader of a new session and group
        for pid in _descendants(roots):
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for g in groups:
                try:
                    os.killpg(g, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for p in self.procs:
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()

    # the flwr CLI ------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["flwr", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def register(self, pub: Path) -> int:
        r = self.flwr("supernode", "register", str(pub), self.connection, "--format", "json")
        try:
            return int(json.loads(r.stdout)["node-id"])
        except (ValueError, KeyError) as exc:
            raise HarnessError(f"flwr supernode register failed: {r.stdout}{r.stderr}") from exc

    def nodes(self) -> list[dict]:
        r = self.flwr("supernode", "list", self.connection, "--format", "json")
        try:
            return json.loads(r.stdout).get("nodes", [])
        except ValueError as exc:
            raise HarnessError(f"flwr supernode list failed: {r.stdout}{r.stderr}") from exc

    def submit(self, app_dir: Path, run_config: Path) -> int:
        """``flwr run``; returns the run id (the run goes on in the background)."""
        r = self.flwr(
            "run", str(app_dir), self.connection, "--run-config", str(run_config),
            "--format", "json",
        )  # fmt: skip
        try:
            return int(json.loads(r.stdout)["run-id"])
        except (ValueError, KeyError) as exc:
            raise HarnessError(f"flwr run failed: {r.stdout}{r.stderr}") from exc

    def status(self, run_id: int) -> dict:
        r = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(r.stdout)["runs"]
        except (ValueError, KeyError) as exc:
            raise HarnessError(f"flwr ls failed: {r.stdout}{r.stderr}") from exc
        return runs[0] if runs else {}

    def wait(self, run_id: int, timeout: float = 300.0, hint: Path | None = None) -> dict:
        """Poll ``flwr ls`` until the run is finished; returns its row.

        Each ``flwr`` call is a new Python process (about a CPU-second), so it is asked
        every ``ls_every`` seconds, or at once when ``hint`` (e.g. the run's
        ``summary.json``) appears."""
        end = time.monotonic() + timeout
        last = -1e9
        while time.monotonic() < end:
            if time.monotonic() - last >= self.ls_every or (hint is not None and hint.exists()):
                last = time.monotonic()
                row = self.status(run_id)
                if str(row.get("status", "")).startswith("finished"):
                    return row
            time.sleep(0.5)
        raise HarnessError(f"run {run_id} not finished after {timeout:g} s")

    def log(self, run_id: int) -> str:
        r = self.flwr("log", str(run_id), self.connection, "--show", timeout=60)
        return r.stdout + r.stderr
