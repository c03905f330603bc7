"""Migrations: from empty, reopen, newer versions refused, failed steps rolled back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from meshpacs.errors import CatalogError, MeshError, SchemaTooNew
from meshpacs.metadata import SCHEMA_VERSION, Catalog
from meshpacs.metadata.schema import MIGRATIONS, current_version, migrate, split_statements

from .helpers import FakeClock, make_record

TABLES = {"schema_version", "patients", "studies", "series", "instances", "backup_queue"}


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


async def pragma(conn: aiosqlite.Connection, name: str) -> object:
    [row] = await conn.execute_fetchall(f"PRAGMA {name}")
    return row[0]


async def test_open_creates_newest_schema_in_wal(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "c.sqlite"
    async with await Catalog.open(path, clock=clock) as catalog:
        conn = catalog._conn
        assert await pragma(conn, "journal_mode") == "wal"
        assert await pragma(conn, "synchronous") == 2  # FULL: the WAL is fsynced at COMMIT
        assert await pragma(conn, "foreign_keys") == 1
        assert await current_version(conn) == SCHEMA_VERSION
    assert tables(path) >= TABLES
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT version, applied_at FROM schema_version").fetchall()
    assert rows == [(v, clock.now) for v, _ in MIGRATIONS]


async def test_reopen_keeps_data_and_does_not_migrate_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "c.sqlite"
    async with await Catalog.open(path, clock=clock) as catalog:
        await catalog.add_instances([make_record()])
    async with await Catalog.open(path, clock=clock) as catalog:
        assert (await catalog.counts())["instances"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (len(MIGRATIONS),)


async def test_newer_schema_is_refused_and_left_alone(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "c.sqlite"
    async with await Catalog.open(path, clock=clock) as catalog:
        await catalog.add_instances([make_record()])
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew) as caught:
        await Catalog.open(path, clock=clock)
    assert isinstance(caught.value, CatalogError)
    assert caught.value.found == SCHEMA_VERSION + 1
    assert "newer" in str(caught.value)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM instances").fetchone() == (1,)


async def test_older_catalog_is_migrated_in_order(tmp_path: Path) -> None:
    newest = len(MIGRATIONS)
    extra = "CREATE TABLE extra (x TEXT);\nCREATE INDEX extra_x ON extra (x);"
    later = (*MIGRATIONS, (newest + 1, extra))
    async with aiosqlite.connect(tmp_path / "c.sqlite", isolation_level=None) as conn:
        assert await current_version(conn) == 0
        assert await migrate(conn, migrations=MIGRATIONS[:1], clock=lambda: 4.0) == 1
        assert await migrate(conn, clock=lambda: 5.0) == newest
        assert await migrate(conn, migrations=later, clock=lambda: 6.0) == newest + 1
        rows = list(await conn.execute_fetchall("SELECT * FROM schema_version ORDER BY version"))
        expected = [(1, 4.0)] + [(v, 5.0) for v in range(2, newest + 1)] + [(newest + 1, 6.0)]
        assert [tuple(r) for r in rows] == expected
        # The older code now finds a newer catalog.
        with pytest.raises(SchemaTooNew):
            await migrate(conn)


async def test_failed_migration_rolls_back_whole_step(tmp_path: Path) -> None:
    broken = (*MIGRATIONS, (len(MIGRATIONS) + 1, "CREATE TABLE half (x);\nCREATE TABLE broken (;"))
    async with aiosqlite.connect(tmp_path / "c.sqlite", isolation_level=None) as conn:
        await migrate(conn)
        with pytest.raises(CatalogError):
            await migrate(conn, migrations=broken)
        assert await current_version(conn) == len(MIGRATIONS)
        names = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE name = 'half'")
        assert list(names) == []
        assert not conn.in_transaction


async def test_not_a_database_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(CatalogError):
        await Catalog.open(path)


async def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE patients (whatever)")
    with pytest.raises(MeshError):
        await Catalog.open(path)


def test_split_statements_keeps_trigger_bodies() -> None:
    script = (
        "CREATE TABLE a (x);\n"
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n"
        "  UPDATE a SET x = 1;\n"
        "  DELETE FROM a WHERE x = 2;\n"
        "END;\n"
        "CREATE INDEX i ON a (x);\n"
    )
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError):
        split_statements("CREATE TABLE a (x")
    assert len(split_statements(MIGRATIONS[0][1])) > 10


async def test_migrations_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "c.sqlite", isolation_level=None) as conn:
        for bad in ((), ((2, "SELECT 1;"),), ((1, "SELECT 1;"), (3, "SELECT 1;"))):
            with pytest.raises(ValueError):
                await migrate(conn, migrations=bad)


def test_catalog_errors_are_part_of_the_one_tree() -> None:
    import meshpacs.errors as errors

    for name in ("CatalogError", "SchemaTooNew", "InvalidQuery", "QueryTooLarge"):
        assert name in errors.__all__
        assert name in (errors.__doc__ or "")
        assert issubclass(getattr(errors, name), MeshError)


async def test_a_version_1_catalog_with_data_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await migrate(conn, migrations=MIGRATIONS[:1])
        await conn.execute("INSERT INTO patients (patient_id) VALUES ('P1')")
    async with await Catalog.open(path) as catalog:
        assert (await catalog.counts())["patients"] == 1
        await catalog.add_instances([make_record()])
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await current_version(conn) == SCHEMA_VERSION
        names = {r[0] for r in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
    assert {"bundles", "bundle_members", "placements", "instances"} <= names
