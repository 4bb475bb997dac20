"""A private PostgreSQL cluster for the demo and the tests.

`EmbeddedPostgres` starts a cluster with `wal_level=logical` on a free loopback port, in a data
directory of its own, from the binaries of the `pgserver` wheel (or PostgreSQL found on PATH).
`resolve_server()` returns either that or an existing server named by a URL, behind one small
interface: `url(dbname)`, `create_database(name)`, `stop()`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from common.waiting import TimedOut, wait_until

DEFAULT_DATA_DIR = Path(".strangler") / "postgres"
ENV_DATABASE_URL = "STRANGLER_DATABASE_URL"
# PostgreSQL refuses to run as root; when we are root the cluster runs as this user.
UNPRIVILEGED_USER = "strangler-pg"

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "max_wal_size": "2GB",
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


class PostgresError(Exception):
    """The embedded PostgreSQL could not be found, started or used."""


class PostgresServer(Protocol):
    """What the demo and the tests need of a PostgreSQL server."""

    def url(self, dbname: str = "postgres") -> str: ...

    def create_database(self, name: str, *, exist_ok: bool = True) -> str: ...

    def stop(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_bin_dir() -> Path:
    """The directory holding `initdb` and `postgres`: the pgserver wheel first, then PATH."""
    # Located without importing: importing pgserver starts its own server machinery.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise PostgresError(
        "no PostgreSQL binaries found: install the 'embedded' extra (pip install 'strangler[embedded]', "
        "it brings the pgserver wheel), put PostgreSQL's bin directory on PATH, or pass --database-url."
    )


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED_USER],
            check=False,
            capture_output=True,
        )
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return "nobody"
    return UNPRIVILEGED_USER


def _open_prefixes(path: Path) -> None:
    """Let the unprivileged server user traverse every parent of `path`."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if mode & 0o011 != 0o011:
                parent.chmod(mode | 0o011)
        except OSError:
            pass


class EmbeddedPostgres:
    """A private PostgreSQL cluster with logical replication, on a free loopback port.

    Use as a context manager, or call `start()` and `stop()`. The data directory is kept
    between runs unless `ephemeral=True`.
    """

    def __init__(
        self,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        *,
        port: int | None = None,
        ephemeral: bool = False,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        # Overrides of SERVER_SETTINGS, e.g. {"wal_level": "replica"} for a cluster that lacks something.
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.port = port
        self.ephemeral = ephemeral
        self._bin_dir = bin_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        bin_dir = self._bin_dir or find_bin_dir()
        self._user = _run_as()
        if self._user:
            _open_prefixes(bin_dir)
            _open_prefixes(self.data_dir.parent)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                "initdb",
            )
        self._stop_leftover(bin_dir)
        if self.port is None:
            self.port = free_port()
        args = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.data_dir / "server.log", "ab")
        self._process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, user=self._user, start_new_session=True
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, checkpoint, exit.
            self._process.send_signal(2)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self.ephemeral:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- use -----------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise PostgresError("the embedded PostgreSQL is not started; call start() first.")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, *, exist_ok: bool = True) -> str:
        return create_database(self.url(), name, exist_ok=exist_ok)

    # -- internals -----------------------------------------------------------------------------

    def _run(self, args: list[str], what: str) -> None:
        result = subprocess.run(args, capture_output=True, user=self._user)
        if result.returncode != 0:
            raise PostgresError(
                f"{what} failed in {self.data_dir}: {result.stderr.decode(errors='replace').strip()}"
            )

    def _stop_leftover(self, bin_dir: Path) -> None:
        """A server left running in our data directory by a killed run is stopped first."""
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                user=self._user,
            )

    def _wait_ready(self, timeout: float) -> None:
        import psycopg2

        last_error = ""

        def ready() -> bool:
            nonlocal last_error
            assert self._process is not None
            if self._process.poll() is not None:
                log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
                raise PostgresError(f"PostgreSQL exited at start (code {self._process.returncode}):\n{log}")
            try:
                psycopg2.connect(self.url(), connect_timeout=2).close()
                return True
            except psycopg2.OperationalError as exc:
                last_error = str(exc).strip()
                return False

        try:
            wait_until(ready, timeout, 0.05, what="PostgreSQL to accept connections")
        except TimedOut:
            self.stop()
            raise PostgresError(f"PostgreSQL did not accept connections within {timeout:.0f}s: {last_error}") from None


class ExternalPostgres:
    """An existing server named by a URL; databases are created beside the URL's own."""

    def __init__(self, url: str) -> None:
        self._url = url

    def url(self, dbname: str = "postgres") -> str:
        parts = urlsplit(self._url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def create_database(self, name: str, *, exist_ok: bool = True) -> str:
        return create_database(self._url, name, exist_ok=exist_ok)

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


def create_database(server_url: str, name: str, *, exist_ok: bool = True) -> str:
    """Create database `name` on the server of `server_url`; return its URL."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(server_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            elif not exist_ok:
                raise PostgresError(f"database {name!r} already exists on {server_url}.")
    finally:
        conn.close()
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def resolve_server(database_url: str | None = None, data_dir: Path | str = DEFAULT_DATA_DIR) -> PostgresServer:
    """`--database-url` (or STRANGLER_DATABASE_URL) if given, else a started embedded cluster."""
    url = database_url or os.environ.get(ENV_DATABASE_URL)
    if url:
        return ExternalPostgres(url)
    return EmbeddedPostgres(data_dir).start()
