"""A throwaway PostgreSQL server for tests: initdb in a temp dir, listening on 127.0.0.1 only.

Uses the machine's server binaries (``/usr/lib/postgresql/*/bin``, Debian's layout, else
``initdb`` / ``pg_ctl`` on PATH). ``initdb`` refuses to run as root, so under root the server
runs as an unprivileged user (``nobody``, or ``RAYLAW_TEST_PG_USER``) that owns the temp dir.
Authentication is ``trust`` for the role ``raylaw`` on loopback: test data only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROLE = "raylaw"


def server_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, else PATH's, else None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: [int(p) if p.isdigit() else 0
                                 for p in Path(d).parent.name.split(".")])
    for d in reversed(dirs):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` a server in a new temp dir; ``url(db)`` creates a database; ``stop()``."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="raylaw-pg-"))
        self.port = 0
        self._user = None
        if os.geteuid() == 0:  # initdb and postgres refuse root
            self._user = pwd.getpwnam(os.environ.get("RAYLAW_TEST_PG_USER", "nobody"))
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {}
        if self._user is not None:
            kw = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        r = subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=self.root, env=env,
                           capture_output=True, text=True, timeout=timeout, **kw)
        if r.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed (rc {r.returncode}): {r.stderr}\n{tail}")
        return r

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        for attempt in range(5):  # another process may take the free port first
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(data),
                          "-l", str(self.root / "server.log"), "-o", opts)
                return self
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.5)
        return self

    def url(self, database: str) -> str:
        """A new, empty database on this server, as a SQLAlchemy URL (psycopg 3)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.root / "data"))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
