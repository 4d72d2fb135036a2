"""deploy/postgresql/: a real PostgreSQL loads the settings and the pg_hba rules as shipped, and
admits the bus's role to its database over TLS only (only the addresses are changed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dj_database_url
import psycopg
import pytest

from tests import postgres
from tests.environment import canary, free_port
from tests.postgres import Postgres
from tests.services import ROOT, wait_for
from tests.tls import self_signed_certificate

SHIPPED = ROOT / "deploy" / "postgresql"
APP_HOST = "10.0.1.11/32"  # the example's first application host; the test's is 127.0.0.1


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Postgres, Path]]:
    """A throwaway server whose postgresql.conf includes intelliwiz.conf and whose pg_hba.conf
    is pg_hba.conf.example; the certificate paths and listen address are the test's own."""
    try:
        postgres.binary("postgres")
    except FileNotFoundError:
        pytest.skip(
            "PostgreSQL's server binaries are missing (make test DB=postgres installs them)"
        )
    pg = Postgres(free_port(), canary("pgconfig")).start()
    try:
        owner = os.stat(pg.data)
        cert, key = self_signed_certificate(pg.data)
        for path in (cert, key):
            os.chown(path, owner.st_uid, owner.st_gid)
        key.chmod(0o600)
        with (pg.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"include '{SHIPPED / 'intelliwiz.conf'}'\n"
                f"listen_addresses = '{pg.host}'\n"
                f"ssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
            )
        hba = (SHIPPED / "pg_hba.conf.example").read_text()
        assert APP_HOST in hba
        (pg.data / "pg_hba.conf").write_text(hba.replace(APP_HOST, "127.0.0.1/32"))
        # Still admitted by the server's own pg_hba (no TLS yet): the reload puts the shipped one
        # and TLS in force.
        with psycopg.connect(pg.url, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")
            wait_for(
                lambda: admin.execute("SHOW ssl").fetchone() == ("on",),
                timeout=10,
                interval=0.1,
                what="ssl on after the reload",
            )
        yield pg, cert
    finally:
        pg.stop()


def test_postgresql_takes_every_shipped_setting_and_pg_hba_line_without_an_error(server):
    pg, _ = server
    with psycopg.connect(pg.url, sslmode="require") as conn:
        settings = conn.execute(
            "SELECT name, error FROM pg_file_settings WHERE sourcefile = %s",
            [str(SHIPPED / "intelliwiz.conf")],
        ).fetchall()
        hba_errors = conn.execute(
            "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
        ).fetchall()
        restart_only = {
            name
            for (name,) in conn.execute("SELECT name FROM pg_settings WHERE context = 'postmaster'")
        }
        in_force = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('password_encryption', 'ssl', 'ssl_min_protocol_version')"
            ).fetchall()
        )
    assert {name for name, _ in settings} == {
        "client_connection_check_interval",
        "listen_addresses",
        "max_connections",
        "password_encryption",
        "ssl",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_min_protocol_version",
    }
    # A reload parses every line; one that needs a restart (max_connections, the server here
    # having its own on the command line) is reported as waiting for it, nothing else may fail.
    failed = {name: error for name, error in settings if error}
    assert set(failed.values()) <= {"setting could not be applied"}, failed
    assert set(failed) <= restart_only, failed
    assert hba_errors == []
    assert in_force == {
        "password_encryption": "scram-sha-256",
        "ssl": "on",
        "ssl_min_protocol_version": "TLSv1.2",
    }


def test_the_bus_is_admitted_over_tls_only_and_to_its_own_database_only(server):
    pg, ca = server
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(pg.url, sslmode="disable").close()
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
        psycopg.connect(pg.url, sslmode="require", dbname="template1").close()

    # DATABASE_URL as deploy/postgresql/README.md writes it: its query string reaches the driver.
    url = f"{pg.url}?sslmode=verify-full&sslrootcert={ca}"
    database = dj_database_url.parse(url)
    assert database["OPTIONS"] == {"sslmode": "verify-full", "sslrootcert": str(ca)}
    with psycopg.connect(
        dbname=database["NAME"],
        user=database["USER"],
        password=database["PASSWORD"],
        host=database["HOST"],
        port=database["PORT"],
        **database["OPTIONS"],
    ) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
