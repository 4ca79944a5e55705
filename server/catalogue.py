"""The tracker's persistent catalogue: every film and file version ever registered.

One table, ``films``, keyed by version (the manifest hash); the manifest is
kept whole as JSON. The same SQL runs on SQLite (the embedded default, one
file) and on PostgreSQL (``postgresql://...``, so that several trackers can
serve one catalogue); only the parameter style differs. Every write is one
committed transaction, so a tracker killed with ``kill -9`` loses no film
whose registration was answered.

Holdings (who holds what) are soft state and are not kept here: peers
announce them again after a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from server.manifest import Manifest

SCHEMA = """
CREATE TABLE IF NOT EXISTS films (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    size BIGINT NOT NULL,
    blocks INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL
)
"""
INDEX = "CREATE INDEX IF NOT EXISTS films_name ON films (name)"


class CatalogueError(RuntimeError):
    """The database cannot be opened or used."""


class Catalogue:
    """Films and files by version, in SQLite or PostgreSQL; safe to share between threads."""

    def __init__(self, where: str | Path):
        self.where = str(where)
        self._lock = threading.Lock()
        if self.where.startswith(("postgresql://", "postgres://")):
            self._conn = _connect_postgres(self.where)
            self._param = "%s"
        else:
            Path(self.where).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = sqlite3.connect(self.where, check_same_thread=False, timeout=10,
                                             isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise CatalogueError(f"cannot open the catalogue {self.where}: {exc}") from None
            self._param = "?"
        with self._lock:
            self._execute(SCHEMA)
            self._execute(INDEX)

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        """(Under the lock.) Run one statement in its own transaction; the rows it returns."""
        sql = sql.replace("?", self._param)
        try:
            cursor = self._conn.cursor()
            cursor.execute(sql, args)
            rows = cursor.fetchall() if cursor.description else []
            if self._param == "%s":
                self._conn.commit()
            return rows
        except Exception as exc:
            if self._param == "%s":
                self._conn.rollback()
            raise CatalogueError(f"catalogue {self.where}: {exc}") from None

    def add(self, manifest: Manifest, now: float) -> bool:
        """Keep ``manifest``; True when its version is new."""
        with self._lock:
            rows = self._execute(
                "INSERT INTO films (version, name, kind, size, blocks, manifest, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING RETURNING version",
                (manifest.version, manifest.name, manifest.kind, manifest.size, len(manifest),
                 json.dumps(manifest.to_json(), separators=(",", ":")), now))
        return bool(rows)

    def get(self, version: str) -> Manifest | None:
        with self._lock:
            rows = self._execute("SELECT manifest FROM films WHERE version = ?", (version,))
        return Manifest.parse(json.loads(rows[0][0])) if rows else None

    def search(self, word: str) -> list[tuple[str, Manifest]]:
        """Every version whose name contains ``word`` (any case), by name then age."""
        pattern = "%" + word.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            rows = self._execute(
                "SELECT version, manifest FROM films WHERE lower(name) LIKE ? ESCAPE '\\' "
                "ORDER BY name, registered_at", (pattern,))
        return [(version, Manifest.parse(json.loads(text))) for version, text in rows]

    def all(self) -> list[tuple[str, Manifest]]:
        return self.search("")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _connect_postgres(url: str):
    try:
        import psycopg
    except ImportError:
        raise CatalogueError("PostgreSQL needs the psycopg package (pip install 'psycopg[binary]')") from None
    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        where = url.rpartition("@")[2]  # the URL without its credentials
        raise CatalogueError(f"cannot connect to PostgreSQL at {where}: {exc}") from None
