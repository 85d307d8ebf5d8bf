"""PgBouncer in session mode between the platform's processes and PostgreSQL, one per host
that opens the Dagster instance or the warehouse (`stack up --production`: one on
127.0.0.1; `hosts up`: one on each of `control`, `worker-1`, `worker-2`, on that host's
address).

Dagster's PostgreSQL storage opens a new connection for every operation (SQLAlchemy's
NullPool). Each one costs a TCP, startup and SCRAM handshake (several round trips) and a
PostgreSQL backend process. A client connects to the pooler on its own host instead; the
pooler keeps its server connections to PostgreSQL open across the link and hands them on.

The configuration is deploy/vm/pgbouncer.ini filled in: md5 between the clients and the
pooler (a hop on the machine itself; SCRAM would run PBKDF2 at both ends of every client
connection), SCRAM from the pooler to PostgreSQL. The password goes in the pooler's
userlist, a file of mode 0600 owned by the account PgBouncer runs as (it refuses root: the
same unprivileged account as PostgreSQL); it is never on a command line. PgBouncer logs to
stderr, which goes to a `pgbouncer.log` beside the other services' logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_platform_dev.emulators import StackError
from farm_platform_dev.postgres import SUPERUSER, unprivileged_user
from farm_platform_dev.processes import stop_processes
from farm_platform_dev.topology_processes import POOLER_FOLDER, wait_for_port
from farm_platform_dev.vm_artifacts import LOCALHOST, VM_ARTIFACTS, render

POOLER_CONFIG = VM_ARTIFACTS / "pgbouncer.ini"
POOLER_PORT = 6432
# PostgreSQL's max_connections on the topologies: above the sum of every pooler's pools
# (deploy/vm/pgbouncer.ini: 2 x 50 each, three poolers on the hosts).
SERVER_MAX_CONNECTIONS = 400
CONFIG_FILE = "pgbouncer.ini"
USERLIST_FILE = "userlist.txt"


@dataclass(frozen=True)
class Pooler:
    """One PgBouncer: its folder (configuration, userlist), where it listens, where the
    PostgreSQL server is."""

    folder: Path
    listen_host: str
    listen_port: int
    pg_host: str
    pg_port: int
    # Where its stderr goes: beside the other services' logs.
    log: Path

    @property
    def config_file(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def marker(self) -> str:
        """What its command line holds, so that a reused pid is not taken for it."""
        return str(self.config_file)

    def url(self, password: str, database: str) -> str:
        """A client's URL of `database` through the pooler (`password` URL-quoted)."""
        return (
            f"postgresql://{SUPERUSER}:{password}@{self.listen_host}:{self.listen_port}/{database}"
        )

    def start(self, password: str) -> int:
        """Write its files and start it detached; its pid once it listens (StackError with
        its log's tail if it exits first)."""
        executable = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
        )
        if executable is None:
            raise StackError(
                "pgbouncer is not installed: `apt-get install pgbouncer` "
                "(scripts/install_system_deps.sh installs it)"
            )
        user = unprivileged_user()
        self._write_files(password, user)
        extra: dict[str, Any] = {}
        if user is not None:
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                [executable, str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/bin", "LC_ALL": "C"},
                cwd=self.folder,
                start_new_session=True,
                close_fds=True,
                **extra,
            )
        wait_for_port(self.listen_port, process.pid, "pgbouncer", self.log, self.listen_host)
        return process.pid

    def _write_files(self, password: str, user: object) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        userlist = self.folder / USERLIST_FILE
        # Created 0600 before the secret goes in: never readable by anyone else, even briefly.
        userlist.unlink(missing_ok=True)
        descriptor = os.open(userlist, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(f'"{SUPERUSER}" "{_quoted(password)}"\n')
        self.config_file.write_text(
            render(
                POOLER_CONFIG,
                LISTEN_ADDR=self.listen_host,
                LISTEN_PORT=self.listen_port,
                PG_HOST=self.pg_host,
                PG_PORT=self.pg_port,
                AUTH_FILE=userlist,
            )
        )
        if user is not None:
            for path in (self.folder, userlist, self.config_file):
                os.chown(path, user.pw_uid, user.pw_gid)  # type: ignore[attr-defined]
        self.folder.chmod(0o700)


def _quoted(password: str) -> str:
    """The password as a userlist field: a double quote is written twice."""
    if "\n" in password:
        raise StackError("FARM_PG_PASSWORD holds a newline, which PgBouncer's userlist cannot")
    return password.replace('"', '""')


def topology_pooler(state: dict[str, Any], state_dir: Path) -> Pooler:
    """The one-machine topology's PgBouncer (production.json's `pooler_port`): on 127.0.0.1,
    in front of its PostgreSQL."""
    port, pg_port = int(state["pooler_port"]), int(state["pg_port"])
    log = state_dir / "pgbouncer.log"
    return Pooler(state_dir / POOLER_FOLDER, LOCALHOST, port, LOCALHOST, pg_port, log)


def stop_pooler(pid: int, marker: str) -> None:
    """Stop a PgBouncer started by `Pooler.start` (SIGTERM: it closes every connection)."""
    stop_processes([(pid, marker)])
