"""A real PgBouncer (Debian's ``pgbouncer`` package) in front of the suite's PostgreSQL.

Each instance has its own ini file, a free port on 127.0.0.1, ``auth_type = trust`` and
an auth file naming the database user; it runs in the foreground, as an unprivileged
user when the suite runs as root (PgBouncer refuses root), and logs to ``log``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from relay.embedded import free_port, system_user


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )


@dataclass
class PgBouncer:
    url: str  # the database through PgBouncer
    direct: str  # the same database, straight to PostgreSQL
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextlib.contextmanager
def running(direct_url: str, *, pool_mode: str = "transaction", **settings: object) -> Iterator[PgBouncer]:
    """PgBouncer in ``pool_mode`` in front of ``direct_url``'s server; yields both URLs."""
    binary = find_pgbouncer()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    parts = urlsplit(direct_url)
    user = parts.username or "postgres"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="relay-pgbouncer-"))
    workdir.chmod(0o755)  # readable by the unprivileged user
    (workdir / "users.txt").write_text(f"{_quote(user)} {_quote(parts.password or '')}\n")
    options = {
        "listen_addr": "127.0.0.1",
        "listen_port": port,
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": workdir / "users.txt",
        "pool_mode": pool_mode,
        # Fewer server sessions than Relay's pool has connections, so client connections
        # take turns on the same sessions, as they do on a busy production pooler.
        "default_pool_size": 5,
        "max_client_conn": 200,
        **settings,
    }
    lines = [
        "[databases]",
        f"* = host={parts.hostname} port={parts.port or 5432}",
        "[pgbouncer]",
        *(f"{key} = {value}" for key, value in options.items()),
    ]
    ini = workdir / "pgbouncer.ini"
    ini.write_text("\n".join(lines) + "\n")
    log = workdir / "pgbouncer.log"
    account = system_user()
    entry = pwd.getpwnam(account) if account is not None else None
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, str(ini)],
            stdout=out,
            stderr=subprocess.STDOUT,
            user=entry.pw_uid if entry else None,
            group=entry.pw_gid if entry else None,
            extra_groups=[] if entry else None,
            cwd="/",
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text()}") from None
                time.sleep(0.05)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        yield PgBouncer(url=urlunsplit(parts._replace(netloc=netloc)), direct=direct_url, log=log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
