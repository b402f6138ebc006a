"""Run the Salesforce stand-in over HTTPS on 127.0.0.1 (uvicorn in a background thread, trustme certificates)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import requests
import trustme
import uvicorn

from .app import create_app
from .org import Org

if TYPE_CHECKING:
    from simple_salesforce import Salesforce

log = logging.getLogger(__name__)

API_VERSION = "59.0"
STATE_FILE = "state.json"
INFO_FILE = "standin.json"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"


def _load_or_create_ca(cert_dir: Path, persistent: bool) -> trustme.CA:
    """Reuse the CA kept in a state dir (so clients keep trusting it across restarts), else make one."""
    cert_path, key_path = cert_dir / CA_FILE, cert_dir / CA_KEY_FILE
    if persistent and cert_path.exists() and key_path.exists():
        try:
            return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        except ValueError:
            log.warning("could not reuse the CA in %s; creating a new one", cert_dir)
    ca = trustme.CA(organization_name="conversion_sync Salesforce stand-in")
    ca.cert_pem.write_to_path(str(cert_path))
    ca.private_key_pem.write_to_path(str(key_path))
    os.chmod(key_path, 0o600)
    return ca


class StandinServer:
    """The stand-in org served over HTTPS on 127.0.0.1.

    ``with StandinServer() as standin:`` starts it on a free port; ``standin.url`` is both the login URL and
    the instance URL, ``standin.ca_path`` the CA bundle to pass as ``verify=`` / ``SALESFORCE_CA_BUNDLE``.
    With ``state_dir`` the CA, ``standin.json`` and the org state (``state.json``) live there and the state
    is saved on stop and every ``autosave_seconds`` when records changed.
    """

    def __init__(
        self,
        org: Org | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: str | Path | None = None,
        autosave_seconds: float | None = None,
        log_level: str = "warning",
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the Salesforce stand-in listens on loopback only, not {host!r}")
        self.org = org or Org()
        self.host = host
        self.requested_port = port
        self.state_dir = Path(state_dir).resolve() if state_dir else None
        self.autosave_seconds = autosave_seconds
        self.log_level = log_level
        self.port = 0
        self._tmp_dir: Path | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket: socket.socket | None = None
        self._stop_autosave = threading.Event()
        self._autosave_thread: threading.Thread | None = None
        self.ca_path = Path()

    # -- connection details ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL: the login URL and the instance URL (``https://127.0.0.1:PORT``)."""
        return f"https://{self.host}:{self.port}"

    login_url = url
    instance_url = url

    @property
    def username(self) -> str:
        return self.org.username

    @property
    def password(self) -> str:
        return self.org.password

    @property
    def security_token(self) -> str:
        return self.org.security_token

    @property
    def state_path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir else None

    def connection_info(self) -> dict[str, Any]:
        """What a client needs (written to ``standin.json``), including the product's env var names."""
        return {
            "url": self.url,
            "login_url": self.url,
            "instance_url": self.url,
            "ca_bundle": str(self.ca_path),
            "username": self.username,
            "password": self.password,
            "security_token": self.security_token,
            "client_id": self.org.client_id,
            "client_secret": self.org.client_secret,
            "api_version": API_VERSION,
            "pid": os.getpid(),
            "env": {
                "SALESFORCE_LOGIN_URL": self.url,
                "SALESFORCE_USERNAME": self.username,
                "SALESFORCE_PASSWORD": self.password,
                "SALESFORCE_SECURITY_TOKEN": self.security_token,
                "SALESFORCE_CA_BUNDLE": str(self.ca_path),
            },
        }

    def requests_session(self) -> requests.Session:
        """A ``requests`` session that trusts the stand-in CA and ignores proxy env vars."""
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.ca_path)
        return session

    def login(self, version: str = API_VERSION, session: requests.Session | None = None) -> Salesforce:
        """A ``simple_salesforce.Salesforce`` logged in via SOAP exactly as the product does it."""
        from simple_salesforce import Salesforce, SalesforceLogin

        session = session or self.requests_session()
        session_id, _instance = SalesforceLogin(
            username=self.username,
            password=self.password,
            security_token=self.security_token,
            scratch_url=self.url,
            session=session,
            sf_version=version,
        )
        return Salesforce(session_id=session_id, instance_url=self.url, session=session, version=version)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind, load state (if any), and serve in a background thread until ``stop``."""
        if self._thread is not None:
            return self
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            cert_dir = self.state_dir
        else:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="salesforce-standin-"))
            cert_dir = self._tmp_dir
        ca = _load_or_create_ca(cert_dir, persistent=self.state_dir is not None)
        self.ca_path = cert_dir / CA_FILE
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert_file, key_file = cert_dir / "server.pem", cert_dir / "server-key.pem"
        cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_file))
        os.chmod(key_file, 0o600)

        state_path = self.state_path
        if state_path is not None and state_path.exists():
            self.org.load(state_path)

        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP
        # (without it every response stalls ~40 ms on delayed ACKs).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.org, state_path=state_path),
            host=self.host,
            port=self.port,
            ssl_certfile=str(cert_file),
            ssl_keyfile=str(key_file),
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="salesforce-standin", daemon=True
        )
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("the Salesforce stand-in failed to start (see the log above)")
            self._thread.join(0.02)
        if self.autosave_seconds and state_path is not None:
            self._stop_autosave.clear()
            self._autosave_thread = threading.Thread(
                target=self._autosave, name="standin-autosave", daemon=True
            )
            self._autosave_thread.start()
        if self.state_dir is not None:
            self.write_info(self.state_dir / INFO_FILE)
        return self

    def write_info(self, path: str | Path) -> Path:
        """Write the connection info atomically (a temporary file renamed into place): a reader waiting for
        the file to appear never reads it half written."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.connection_info(), indent=2) + "\n", encoding="utf-8")
        os.chmod(partial, 0o600)
        os.replace(partial, target)
        return target

    def save(self) -> None:
        """Write the org state to ``state_dir/state.json`` (no-op without a state dir)."""
        if self.state_path is not None:
            self.org.save(self.state_path)

    def _autosave(self) -> None:
        assert self.autosave_seconds
        while not self._stop_autosave.wait(self.autosave_seconds):
            if self.org.write_count != self.org.saved_write_count:
                try:
                    self.save()
                except OSError:
                    log.exception("saving the stand-in state failed")

    def stop(self) -> None:
        """Stop serving, save the state (with a state dir) and remove temporary certificates."""
        if self._thread is None:
            return
        assert self._server is not None
        self._server.should_exit = True
        # Idle keep-alive TLS connections only close when their clients do: give in-flight requests a
        # moment, then stop waiting for the rest.
        self._thread.join(timeout=0.3)
        loop = self._loop
        if self._thread.is_alive() and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed in the meantime
                loop.call_soon_threadsafe(self._abort_connections)
            self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=15)
        self._stop_autosave.set()
        if self._autosave_thread is not None:
            self._autosave_thread.join(timeout=15)
            self._autosave_thread = None
        self.save()
        self._cleanup()

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        server = self._server

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(serve())
        self._loop = None

    def _abort_connections(self) -> None:
        """Drop idle keep-alive connections (runs on the server's event loop)."""
        if self._server is None:
            return
        for connection in list(self._server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    def _cleanup(self) -> None:
        self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
