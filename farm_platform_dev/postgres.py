"""A private PostgreSQL server from the installed binaries (tests, benchmarks, fault tests).

`PostgresServer` runs `initdb` in a temporary folder and `pg_ctl start` on a free port of
127.0.0.1 with trust authentication for local connections only, then creates the `farm`
database. It can be killed (`kill`, SIGKILL of the postmaster, as a crash) and started
again on the same port and data, which is what the fault tests need. Servers left behind by
a process that died are swept on the next start.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farm_platform_dev.processes import (
    StartedInWith,
    child_pids,
    free_port,
    kill_now,
    pid_alive,
)

PG_PREFIX = "farm-pg-"
SUPERUSER = "farm"
DATABASE = "farm"


class PostgresError(RuntimeError):
    """The server could not be set up or started; the message says why."""


def postgres_bin_dir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: $FARM_PG_BIN, the newest Debian major version, PATH."""
    override = os.environ.get("FARM_PG_BIN")
    candidates = [override] if override else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and all((Path(candidate) / b).exists() for b in ("initdb", "pg_ctl")):
            return Path(candidate)
    return None


def unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; the account to run it as (None: we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresError(
        "Running as root and neither a `postgres` nor a `nobody` user exists to run "
        "PostgreSQL as; create one (`useradd --system postgres`)."
    )


def _run_as(
    user: pwd.struct_passwd | None,
    args: list[str],
    cwd: Path,
    timeout: float = 60,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    extra: dict[str, Any] = {}
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env["HOME"] = str(cwd)
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        **extra,
    )


def _sweep_orphaned() -> None:
    """Stop servers and remove data dirs left by earlier processes that died uncleanly."""
    for base in Path(tempfile.gettempdir()).glob(PG_PREFIX + "*"):
        try:
            owner_pid = int(json.loads((base / "owner.json").read_text())["owner_pid"])
        except (OSError, ValueError, KeyError):
            with contextlib.suppress(OSError):
                if time.time() - base.stat().st_mtime > 600:
                    shutil.rmtree(base, ignore_errors=True)
            continue
        if pid_alive(owner_pid):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes()
            if str(base).encode() in cmdline:
                os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown
        shutil.rmtree(base, ignore_errors=True)


class PostgresServer(StartedInWith["PostgresServer"]):
    """One throwaway server; `settings`: extra `-c name=value` server options.

    `durable`: a commit is in the WAL before it returns (synchronous_commit on), so a killed
    server loses no committed row. Off (the default, for speed) a kill may lose the last
    few hundred milliseconds of commits: fine for tests that never kill it.

    `base`: a folder of its own that outlives this process (the production topology's);
    by default a temporary folder, removed on `stop`. `password`: password authentication
    (scram) for `farm` instead of trust; it is handed to initdb on a pipe, never a file.
    `databases`: created on the first start. `listen`: the address it listens on;
    `clients`: a network (CIDR) whose TCP connections are also let in, with the password."""

    def __init__(
        self,
        settings: str = "",
        durable: bool = False,
        base: Path | None = None,
        password: str | None = None,
        databases: tuple[str, ...] = (DATABASE,),
        port: int = 0,
        listen: str = "127.0.0.1",
        clients: str | None = None,
    ):
        if clients and not password:
            raise PostgresError(f"clients from {clients} need a password: pass `password`")
        self.listen = listen
        self.clients = clients
        self.settings = settings
        self.durable = durable
        self.port = port
        self.base: Path | None = base.resolve() if base else None
        self.temporary = base is None
        self.password = password
        self.databases = databases
        self._user: pwd.struct_passwd | None = None
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        """`postgresql://farm[:password]@127.0.0.1:PORT/farm`: local connections only."""
        return self.database_url(DATABASE)

    def database_url(self, database: str) -> str:
        from urllib.parse import quote

        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://{SUPERUSER}{secret}@{self.listen}:{self.port}/{database}"

    @property
    def data(self) -> Path:
        assert self.base is not None, "start the server first"
        return self.base / "data"

    def start(self) -> PostgresServer:
        """initdb, start on a free port, create the database."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> PostgresServer:
        self._bin = postgres_bin_dir()
        if self._bin is None:
            raise PostgresError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in "
                "/usr/lib/postgresql/*/bin or on PATH. Install them (`apt-get install "
                "postgresql-15`) or set FARM_PG_BIN to their directory."
            )
        self._user = unprivileged_user()
        if self.temporary:
            _sweep_orphaned()
            # Not under pytest's tmp dirs: those are 0700 root and the postgres user cannot
            # enter them.
            self.base = Path(tempfile.mkdtemp(prefix=PG_PREFIX)).resolve()
            (self.base / "owner.json").write_text(json.dumps({"owner_pid": os.getpid()}))
        assert self.base is not None
        self.base.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        else:
            self._remove_stale_lock()
        for _attempt in range(3):
            self.port = self.port or free_port()
            if self._pg_ctl_start():
                break
            # A port picked free can be taken before postgres binds it: try another.
            if "already in use" not in self.log():
                break
            self.port = 0
        if not self.running():
            raise PostgresError(f"PostgreSQL did not start:\n{self.log()[-3000:]}")
        if fresh:
            self._create_databases()
        return self

    def _initdb(self) -> None:
        # With a password, TCP connections need it (scram) and the Unix socket in `base` is
        # trusted: that is how the password is set, so it never passes through a file.
        auth = (
            ["--auth-local=trust", "--auth-host=scram-sha-256"]
            if self.password
            else ["--auth=trust"]
        )
        command = [str(self._bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, *auth]
        command += ["-E", "UTF8", "--no-locale", "--no-sync"]
        result = _run_as(self._user, command, cwd=self.base)
        if result.returncode != 0:
            raise PostgresError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        if self.clients:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.clients} scram-sha-256\n")

    def _create_databases(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(self.base),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            if self.password:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(SUPERUSER), sql.Literal(self.password)
                    )
                )
            for database in self.databases:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))

    def restart(self) -> None:
        """Start again on the same port and data (after `kill`): crash recovery runs."""
        self._remove_stale_lock()
        if not self._pg_ctl_start():
            raise PostgresError(f"PostgreSQL did not restart:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a crash, as the OOM killer or a lost
        machine would leave it, not a shutdown."""
        pid = self.postmaster_pid()
        if pid is not None:
            kill_now([pid, *child_pids(pid)])

    def _remove_stale_lock(self) -> None:
        """A killed postmaster stays a zombie until its parent reaps it, and PostgreSQL
        refuses to start while the pid in its lock file exists: drop the lock of a dead one."""
        pid = self.postmaster_pid()
        if pid is not None and not pid_alive(pid):
            assert self.base is not None
            for lock in [self.data / "postmaster.pid", *self.base.glob(".s.PGSQL.*.lock")]:
                lock.unlink(missing_ok=True)

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and pid_alive(pid)

    def stop(self) -> None:
        """Stop the server (fast shutdown); a temporary server's folder goes with it. Also
        stops a server this object did not start (one recorded in `base`)."""
        if self.base is None:
            return
        if self._bin is None:
            self._bin, self._user = postgres_bin_dir(), unprivileged_user()
        if self.running():
            self._run("pg_ctl", ["stop", "-m", "fast", "-w", "-D", str(self.data)])
        if self.temporary:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def log(self) -> str:
        path = self.base / "postgres.log" if self.base else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _pg_ctl_start(self) -> bool:
        # Durability is pointless for a throwaway server; speed is not.
        commit = "on" if self.durable else "off"
        options = (
            f"-c listen_addresses={self.listen} -p {self.port} -k {self.base} -c fsync=off "
            f"-c synchronous_commit={commit} -c full_page_writes=off {self.settings}"
        )
        log = str(self.base / "postgres.log") if self.base else "postgres.log"
        result = self._run(
            "pg_ctl",
            ["start", "-w", "-t", "60", "-D", str(self.data), "-l", log, "-o", options],
            timeout=90,
        )
        return result.returncode == 0

    def _run(
        self, program: str, args: list[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None and self.base is not None
        return _run_as(
            self._user, [str(self._bin / program), *args], cwd=self.base, timeout=timeout
        )


@contextlib.contextmanager
def postgres_server(settings: str = "") -> Iterator[str]:
    """The URL of a throwaway server, stopped and removed on exit."""
    with PostgresServer(settings) as server:
        yield server.url


def fresh_database(server_url: str, name: str) -> str:
    """A new, empty database `name` on the server `server_url` reaches (dropped first, with
    any connection a previous run left to it); its URL."""
    import psycopg
    from psycopg import sql

    base, _, _ = server_url.rpartition("/")
    with psycopg.connect(server_url, autocommit=True) as admin:
        database = sql.Identifier(name)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(database))
    return f"{base}/{name}"
