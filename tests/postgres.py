"""A throwaway PostgreSQL server of the suite's own (`make test DB=postgres`, the scaling test).

Debian's `postgresql` package puts `initdb` and `postgres` under /usr/lib/postgresql/<major>/bin;
the server here is never the system cluster: its own data directory, a free port on 127.0.0.1,
a password of the run, and removed at the end. PostgreSQL refuses to run as root, so under root
(CI) it runs as the `postgres` account the package creates (or `nobody`).

Django-free: tests/environment.py starts it before the settings are read.
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
from collections.abc import Callable
from pathlib import Path

USER = "intelliwiz"
DATABASE = "intelliwiz"


def binary(name: str) -> str:
    """`name` from the newest /usr/lib/postgresql/<major>/bin, else from PATH (Debian's own
    /usr/bin/createdb is a wrapper that looks for a system cluster: not that one first)."""
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if candidates:
        return max(candidates, key=lambda path: int(Path(path).parts[-3]))
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name} not found: install Debian's postgresql package (make test DB=postgres installs it)"
    )


def _runs_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("PostgreSQL cannot run as root, and there is no postgres or nobody user")


class Postgres:
    """A PostgreSQL server on `port` of 127.0.0.1 with one database and its owner."""

    def __init__(
        self,
        port: int,
        password: str,
        *,
        host: str = "127.0.0.1",
        on_host: Callable[[list[str]], list[str]] = list,
    ) -> None:
        """`host`: the address it listens on; `on_host`: a wrapper of the server's command line
        that runs it on another host (e.g. `netns.Host.argv`, where that address lives)."""
        self.port = port
        self.host = host
        self.password = password
        self.on_host = on_host
        self._account = _runs_as()
        # Under root, the server's account must reach its directory: not under a TMPDIR inside
        # a private (0700) scratch directory, as a nested test session has it.
        self.root = Path(
            tempfile.mkdtemp(prefix="intelliwiz-pg-", dir="/tmp" if self._account else None)  # noqa: S108
        )
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgres://{USER}:{self.password}@{self.host}:{self.port}/{DATABASE}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        """`argv` run as the server's account: root dropped last, after any host wrapper."""
        if self._account is None:
            return argv
        uid, gid = self._account.pw_uid, self._account.pw_gid
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]

    def start(self, timeout: float = 60, *, create_database: bool = True) -> Postgres:
        """Initialise and start the server; with `create_database`, create the URL's database
        (the suite leaves that to the test runner, which creates it afresh)."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._account is not None:
            os.chmod(self.root, 0o700)
            for path in (self.root, pwfile):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        initdb = [
            binary("initdb"),
            "-D", str(self.data),
            "-U", USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]  # fmt: skip
        init = subprocess.run(
            self._as_owner(initdb), capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        # initdb lets in loopback only; on a host of its own, the hosts of its subnet too.
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all samenet scram-sha-256\n")
        server = [
            binary("postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            "-c", f"unix_socket_directories={self.root}",
            # Many short-lived services connect at once (workers' pools, stacks).
            "-c", "max_connections=300",
            # Throwaway: the suite proves behaviour, not durability of this server.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            # A backend whose client died (a worker killed mid-statement) stops within 1 s
            # instead of running its statement to the end with its locks held.
            "-c", "client_connection_check_interval=1000",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.on_host(self._as_owner(server)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"postgres on port {self.port} did not accept connections")
            time.sleep(0.1)
        try:
            if create_database:
                self._create_database()
        except BaseException:
            self.stop()
            raise
        return self

    def _accepts(self) -> bool:
        ready = subprocess.run(
            [binary("pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
            capture_output=True,
            timeout=10,
        )
        return ready.returncode == 0

    def _create_database(self) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        created = subprocess.run(
            [binary("createdb"), "-h", self.host, "-p", str(self.port), "-U", USER, DATABASE],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr.strip()}")

    def kill(self) -> None:
        """SIGKILL the whole server, as a host losing power would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended), then remove every file of it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
