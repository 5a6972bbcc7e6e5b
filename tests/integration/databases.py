"""Private database servers for the integration tests: started on free ports, stopped at teardown.

The distribution's packages are installed by ``make setup``; a server missing here is a setup failure,
never a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import TlsCert, free_port, stop_process


@dataclass
class Postgres:
    """A private PostgreSQL cluster: its server process, port and database."""

    proc: subprocess.Popen
    port: int
    database: str
    directory: Path
    bindir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def dsn(self, sslmode: str = "disable") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={self.database} user=postgres sslmode={sslmode}"

    def psql(self, sql: str, sslmode: str = "disable") -> str:
        res = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(sslmode), "-c", sql],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode != 0:
            pytest.fail(f"psql {sql!r} failed: {res.stderr}")
        return res.stdout


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian keeps them versioned)."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    assert dirs, "PostgreSQL is not installed (make setup installs postgresql)"
    return dirs[-1].parent


def _as_postgres(argv: list[str], **kw) -> subprocess.Popen:
    """Run as the postgres user: the server refuses to run as root."""
    return subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *argv], **kw)


def start_postgres(tls: TlsCert | None = None) -> Postgres:
    """initdb a cluster in a fresh directory, start it on a free port (TLS on with a cert), create ``shop``."""
    bindir = postgres_bindir()
    pw = pwd.getpwnam("postgres")
    # Outside pytest's root-only tmp tree: the postgres user must reach its own directory.
    d = Path(tempfile.mkdtemp(prefix="otelbpf-pg-"))
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    data = d / "data"
    init = _as_postgres(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = init.communicate(timeout=120)
    assert init.returncode == 0, f"initdb failed: {out}"
    options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d}", "-c", "fsync=off"]
    if tls:
        for name, src in (("server.crt", tls.cert), ("server.key", tls.key)):
            shutil.copy(src, d / name)
            os.chown(d / name, pw.pw_uid, pw.pw_gid)
            os.chmod(d / name, 0o600)
        options += ["-c", "ssl=on", "-c", f"ssl_cert_file={d / 'server.crt'}", "-c", f"ssl_key_file={d / 'server.key'}"]
    for _ in range(3):  # a free port can be taken between the probe and the server's bind
        port = free_port()
        log = open(d / "server.log", "ab")  # noqa: SIM115 - closed with the server
        proc = _as_postgres(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), *options],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        pg = Postgres(proc, port, "postgres", d, bindir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True, timeout=10
            )
            if ready.returncode == 0:
                pg.psql("CREATE DATABASE shop")
                pg.database = "shop"
                pg.psql("CREATE TABLE items (id integer PRIMARY KEY, name text)")
                pg.psql("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1000, 1100) g")
                return pg
            time.sleep(0.2)
        stop_process(proc)
    pytest.fail(f"postgres did not start: {(d / 'server.log').read_text()}")


def stop_postgres(pg: Postgres) -> None:
    """Stop the server and remove its directory."""
    stop_process(pg.proc)
    shutil.rmtree(pg.directory, ignore_errors=True)


@dataclass
class Redis:
    """A private redis-server on a free port."""

    proc: subprocess.Popen
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(directory: Path) -> Redis:
    """redis-server with no persistence on a free port, answering PING."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (make setup installs it)"
    for _ in range(3):
        port = free_port()
        with open(directory / "redis.log", "ab") as log:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            ping = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                return Redis(proc, port)
            time.sleep(0.1)
        stop_process(proc)
    pytest.fail(f"redis-server did not start: {(directory / 'redis.log').read_text()}")


@dataclass
class MariaDb:
    """A private MariaDB server (no grant tables: root needs no password) with database ``shop``."""

    proc: subprocess.Popen
    port: int
    directory: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, sql: str, database: str = "") -> str:
        argv = ["mariadb", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "-N", "-B", "-e", sql]
        res = subprocess.run([*argv, *([database] if database else [])], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            pytest.fail(f"mariadb {sql!r} failed: {res.stderr}")
        return res.stdout


def start_mariadb() -> MariaDb:
    """mariadb-install-db a data directory, start mariadbd on a free port, create ``shop.items``."""
    for tool in ("mariadb-install-db", "mariadb"):
        assert shutil.which(tool), f"{tool} is not installed (make setup installs mariadb-server and -client)"
    mariadbd = Path("/usr/sbin/mariadbd")
    assert mariadbd.exists(), "mariadbd is not installed (make setup installs mariadb-server)"
    d = Path(tempfile.mkdtemp(prefix="otelbpf-mariadb-"))
    init = subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={d / 'data'}", "--user=root", "--skip-test-db"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, f"mariadb-install-db failed: {init.stderr}"
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [
                str(mariadbd),
                "--no-defaults",
                f"--datadir={d / 'data'}",
                f"--socket={d / 'sock'}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-grant-tables",
                f"--pid-file={d / 'pid'}",
                f"--log-error={d / 'error.log'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = MariaDb(proc, port, d)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            ping = subprocess.run(
                ["mariadb", "-h", "127.0.0.1", "-P", str(port), "-u", "root", "-e", "SELECT 1"],
                capture_output=True,
                timeout=10,
            )
            if ping.returncode == 0:
                server.client("CREATE DATABASE shop")
                server.client("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64))", "shop")
                server.client("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1000_to_1100", "shop")
                return server
            time.sleep(0.2)
        stop_process(proc)
    log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
    pytest.fail(f"mariadbd did not start: {log}")


def stop_mariadb(server: MariaDb) -> None:
    """Stop the server and remove its directory."""
    stop_process(server.proc)
    shutil.rmtree(server.directory, ignore_errors=True)
