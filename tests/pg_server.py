"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, a server on a unix socket.

The server listens on a socket in its own directory only (no TCP port to
collide with), with durability off (a test cluster is thrown away). initdb
and postgres refuse to run as root; as root they run as the ``postgres`` user
(Debian's package creates it) with the cluster directory handed to it.

``python tests/pg_server.py`` starts one and prints its URL until Ctrl-C
(for trying ``hyperinfer gateway --db postgresql://...`` by hand).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

USER = "hyperinfer"  # the cluster's superuser (trust authentication on the socket)


def find_bin_dir() -> Path | None:
    """Directory with initdb and postgres: Debian's /usr/lib/postgresql/N/bin (newest), else PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK):
            return Path(d)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Path(os.path.realpath(initdb)).parent
    return None


def _server_preexec(uid: int | None, gid: int | None):
    """In the server's child process: drop to the unprivileged account (as root), then ask for
    SIGINT (fast shutdown) when the test process dies, so a killed test run leaves no server
    behind. In this order: changing credentials clears the parent-death signal."""

    try:  # looked up here: after setuid the child may not be allowed to read Python's modules
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # not Linux: no parent-death signal
        prctl = None
    sigint = int(signal.SIGINT)

    def run() -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if prctl is not None:
            prctl(1, sigint)  # PR_SET_PDEATHSIG

    return run


class Cluster:
    """``with Cluster() as pg: pg.url("db")``; :meth:`create_database` for a fresh one."""

    def __init__(self, bin_dir: Path | None = None, timeout: float = 60.0):
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) not found; "
                                    "install Debian's postgresql package (scripts/setup.sh does, as root)")
        self.timeout = timeout
        root = os.geteuid() == 0
        # as root, under /tmp: the postgres user must be able to reach it ($TMPDIR may be root-only)
        self.dir = Path(tempfile.mkdtemp(prefix="hyperinfer-pg-", dir="/tmp" if root else None))
        self.data = self.dir / "data"
        self.socket_dir = self.dir  # short path: unix socket paths are limited to ~107 bytes
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "server.log"
        self._run_as: dict = {}
        if root:
            account = pwd.getpwnam("postgres")  # KeyError: no unprivileged account to run as
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._run_as = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[])

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> "Cluster":
        init = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8",
             "--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=self.timeout, **self._run_as)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-2000:]}")
        log = open(self.log_path, "ab")
        if self._run_as:
            os.chown(self.log_path, self._run_as["user"], self._run_as["group"])
        self.proc = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir), "-h", "",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_server_preexec(self._run_as.get("user"), self._run_as.get("group")))
        log.close()
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self._log()}")
            if (self.socket_dir / ".s.PGSQL.5432").exists() and self._ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not accept connections within {self.timeout:.0f}s:\n{self._log()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def url(self, dbname: str) -> str:
        return f"postgresql://{USER}@/{dbname}?host={self.socket_dir}"

    def fresh_url(self) -> str:
        """A new empty schema in the shared test database (milliseconds; a database takes ~0.4 s),
        as a URL whose search_path points at it."""
        import psycopg

        if not hasattr(self, "_test_db"):
            self._test_db = self.create_database("tests")
        name = f"s_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._test_db, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{name}"')
        return f"{self._test_db}&options=-csearch_path%3D{name}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, no checkpoint wait
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with Cluster() as pg:
        print(pg.create_database("dev"), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
