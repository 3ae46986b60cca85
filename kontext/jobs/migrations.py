"""Schema versions of the SQLite job store, applied in order and recorded in ``PRAGMA user_version``.

Each migration is a tuple of statements run in one transaction. Never edit a released migration:
append a new one, so a data directory written by any earlier release opens.
"""

from __future__ import annotations

import sqlite3

from kontext.errors import StartupError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1 - the first release.
    (
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            status TEXT NOT NULL,
            priority REAL NOT NULL DEFAULT 0,
            request TEXT,
            image_source TEXT,
            queued_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            result_sha256 TEXT,
            recipe TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            run_ms INTEGER,
            callback_status TEXT NOT NULL,
            callback_status_code INTEGER,
            callback_attempted_at REAL,
            callback_error TEXT,
            callback_payload_status TEXT,
            swept_at REAL
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)",
        "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at)",
    ),
    # 2 - the result's pixel hash and size (tell "same pixels, other PNG encoder" from "other pixels");
    #     the run time is derived from started_at/finished_at, no longer stored.
    (
        "ALTER TABLE jobs ADD COLUMN result_pixels_sha256 TEXT",
        "ALTER TABLE jobs ADD COLUMN result_width INTEGER",
        "ALTER TABLE jobs ADD COLUMN result_height INTEGER",
        "ALTER TABLE jobs DROP COLUMN run_ms",
    ),
    # 3 - which worker (device) ran the job.
    (
        "ALTER TABLE jobs ADD COLUMN worker TEXT",
    ),
    # 4 - runs ended by a write the store refused (retried), told apart from runs cut off by a stopped process.
    (
        "ALTER TABLE jobs ADD COLUMN store_retries INTEGER NOT NULL DEFAULT 0",
    ),
    # 5 - the request's digest: the same job_id sent again with the same request is the same job (idempotent).
    (
        "ALTER TABLE jobs ADD COLUMN request_digest TEXT",
    ),
)

LATEST = len(MIGRATIONS)
MIN_SQLITE = (3, 35, 0)
"""Migration 2 drops a column: ``ALTER TABLE ... DROP COLUMN`` came with SQLite 3.35."""


def check_library() -> None:
    """Refuse to start on an SQLite library too old for the migrations, with the reason (not a syntax error
    halfway through migrating)."""
    found = tuple(sqlite3.sqlite_version_info)
    if found < MIN_SQLITE:
        raise StartupError(f"SQLite {'.'.join(map(str, found))} is too old: the job store needs SQLite "
                           f"{'.'.join(map(str, MIN_SQLITE))} or newer (ALTER TABLE ... DROP COLUMN); use a Python "
                           "built with a newer SQLite, or JOB_BACKEND=redis")


def migrate(connection: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database to ``LATEST``; returns (version found, version now).

    The connection must be in autocommit mode (``isolation_level=None``): each migration runs in
    its own ``BEGIN IMMEDIATE ... COMMIT`` and a failure rolls that migration back whole.
    """
    found = connection.execute("PRAGMA user_version").fetchone()[0]
    if found > LATEST:
        raise StartupError(f"the job database has schema version {found}, newer than this release knows "
                           f"({LATEST}); it was written by a newer kontext-miner: upgrade, or use another DATA_DIR")
    for version in range(found, LATEST):
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version + 1}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    return found, LATEST
