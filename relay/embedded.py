"""A throwaway PostgreSQL server for `relay demo` and the test suite.

Uses the binaries shipped in the ``pgserver`` wheel (the ``embedded`` extra) or
``initdb``/``pg_ctl`` on PATH, and listens on 127.0.0.1 only. Each server lives in a
temporary directory of its own, removed by ``destroy()``.

PostgreSQL refuses to run as root, so when started by root it runs as the system user
``relaypg`` (created if missing), and that user never needs to reach the caller's
directories: the wheel's binaries are copied once into ``CACHE_DIR`` (root-owned,
readable by all, one directory per build, written atomically) and the data directory is
a temporary directory owned by ``relaypg``. No permission of an existing directory is
changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from relay.errors import RelayError

SYSTEM_USER = "relaypg"
CACHE_DIR = Path("/var/cache/relay")
# pg_ctl, initdb and postgres need these parts of the wheel's install tree.
WHEEL_PARTS = ("bin", "lib", "share")
OR_SET_DATABASE_URL = "or set DATABASE_URL to a PostgreSQL server"


class EmbeddedPostgresError(RelayError):
    """The embedded PostgreSQL server cannot start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wheel_package() -> Path | None:
    """The installed ``pgserver`` package holding binaries, found without importing it
    (its import has side effects)."""
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "pginstall" / "bin" / "pg_ctl").exists():
            return Path(location)
    return None


def bin_dir(package: Path | None) -> Path:
    if package is not None:
        return package / "pginstall" / "bin"
    found = shutil.which("pg_ctl")
    if found is None:
        raise EmbeddedPostgresError(
            "no PostgreSQL binaries: install the embedded extra (pip install -e '.[embedded]'; "
            f"`make install` does) {OR_SET_DATABASE_URL}"
        )
    return Path(found).resolve().parent


def world_traversable(path: Path) -> bool:
    """Whether a user with no special rights can reach ``path``."""
    try:
        return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))
    except OSError:
        return False


def system_user() -> str | None:
    """The unprivileged account to run servers as when started by root (created if missing);
    None when not root. PostgreSQL and PgBouncer both refuse to run as root."""
    return _system_user().pw_name if os.geteuid() == 0 else None


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        result = subprocess.CompletedProcess(command, 1, "", str(exc))
    try:  # another process may have created it meanwhile
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root and the system user {SYSTEM_USER} could not be created "
            f"({result.stderr.strip()}): create it, run as another user, {OR_SET_DATABASE_URL}"
        ) from None


def _fingerprint(parts: list[Path], base: Path) -> str:
    """The names and sizes of every file, and the server binary's bytes (~10 MB, a few ms)."""
    digest = hashlib.sha256((parts[0] / "postgres").read_bytes())
    for part in parts:
        for path in sorted(part.rglob("*")):
            digest.update(f"{path.relative_to(base)}\0{path.lstat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _make_readable(root: Path) -> None:
    """Directories 0755, files readable by all (and executable by all where the owner may run them)."""
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod((mode & 0o777) | 0o444 | (0o111 if mode & 0o100 else 0))


def cached_binaries(package: Path, cache_dir: Path | None = None) -> Path:
    """The ``bin`` directory of a copy of the wheel's binaries that every user can run.

    The copy keeps the wheel's layout (the binaries find ``pgserver.libs`` by relative
    path), is keyed by what it holds (``_fingerprint``) and appears by one rename, so
    concurrent callers never see half a copy.
    """
    cache_dir = cache_dir or CACHE_DIR
    base = package.parent
    parts = [package / "pginstall" / name for name in WHEEL_PARTS]
    libs = base / f"{package.name}.libs"
    if libs.is_dir():
        parts.append(libs)
    target = cache_dir / f"pginstall-{_fingerprint(parts, base)}"
    bin_path = target / package.relative_to(base) / "pginstall" / "bin"
    try:
        if not target.is_dir():
            if not cache_dir.is_dir():
                cache_dir.mkdir(parents=True, exist_ok=True)
                cache_dir.chmod(0o755)
            partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_dir))
            try:
                for part in parts:
                    shutil.copytree(part, partial / part.relative_to(base), symlinks=True)
                _make_readable(partial)
                try:
                    partial.rename(target)
                except OSError:
                    if not target.is_dir():
                        raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        if not world_traversable(bin_path):
            raise EmbeddedPostgresError(
                f"{bin_path} is not reachable by the system user {SYSTEM_USER}: "
                f"make its parents traversable (chmod o+x) {OR_SET_DATABASE_URL}"
            )
    except OSError as exc:
        raise EmbeddedPostgresError(
            f"cannot copy the PostgreSQL binaries to {cache_dir} ({exc}): "
            f"run as a user other than root {OR_SET_DATABASE_URL}"
        ) from exc
    return bin_path


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failures = [line for line in lines if any(f"{level}:" in line for level in ("FATAL", "PANIC", "ERROR"))]
    return (failures or lines or ["no output"])[-1]


class EmbeddedPostgres:
    """One PostgreSQL cluster in a temporary directory of its own.

    ``start()`` creates and starts it, ``stop()``/``start()`` restart it with its data,
    ``destroy()`` stops it and removes the directory (also after a failed start).
    """

    def __init__(self, port: int | None = None, *, durable: bool = True, wal_level: str = "logical") -> None:
        self.port = port or free_port()
        self.durable = durable
        # logical: capture mode wal works (a few more bytes of WAL per update and delete).
        self.wal_level = wal_level
        package = wheel_package()
        self.bin = bin_dir(package)
        self.user = _system_user() if os.geteuid() == 0 else None
        if self.user is not None and package is not None:
            self.bin = cached_binaries(package)
        self.home: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def datadir(self) -> Path:
        return self._home() / "pgdata"

    @property
    def logfile(self) -> Path:
        return self._home() / "server.log"

    def _home(self) -> Path:
        if self.home is None:
            parent = Path(tempfile.gettempdir())
            if self.user is not None:  # TMPDIR may be private to root (pam_tmpdir does that)
                reachable = [p for p in (parent, Path("/tmp"), Path("/var/tmp")) if world_traversable(p)]
                if not reachable:
                    raise EmbeddedPostgresError(
                        f"no temporary directory reachable by the system user {SYSTEM_USER}: point "
                        f"TMPDIR at one every user can traverse {OR_SET_DATABASE_URL}"
                    )
                parent = reachable[0]
            self.home = Path(tempfile.mkdtemp(prefix="relay-pg-", dir=parent))
            if self.user is not None:
                os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        return self.home

    def _run(self, *args: str, timeout: float = 60) -> None:
        entry = self.user
        try:
            result = subprocess.run(
                [str(self.bin / args[0]), *args[1:]],
                user=entry.pw_uid if entry else None,
                group=entry.pw_gid if entry else None,
                extra_groups=[] if entry else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedPostgresError(f"{args[0]} failed ({exc}) {OR_SET_DATABASE_URL}") from exc
        if result.returncode != 0:
            reason = _last_line(result.stderr or result.stdout)
            if args[-1] == "start" and self.logfile.exists():  # pg_ctl says only "see the log"
                reason = _last_line(self.logfile.read_text(errors="replace"))
            raise EmbeddedPostgresError(f"{args[0]} failed: {reason} ({OR_SET_DATABASE_URL})")

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        self.init()
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            "-c max_connections=300",
            "-c shared_buffers=128MB",
            f"-c wal_level={self.wal_level}",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.logfile),
            "-o",
            " ".join(options),
            "start",
            timeout=90,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise EmbeddedPostgresError(f"PostgreSQL did not start on port {self.port} ({OR_SET_DATABASE_URL})")

    def stop(self, mode: str = "fast") -> None:
        if self.home is None or not (self.datadir / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop", timeout=90)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            if self.home is not None:
                shutil.rmtree(self.home, ignore_errors=True)
                self.home = None
