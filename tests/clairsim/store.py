"""Where the simulator keeps its data: vulnerability data in memory or in Clair's PostgreSQL schema,
and the indexed layers (always in memory).

Both stores implement Clair's datastore semantics that the API exposes: namespaces are created on
first use and never changed (`soiNamespace`), an updated vulnerability replaces the old row, which
is soft-deleted (`deleted_at`), a fix at MIN_VERSION removes a fix, and a feature version is
affected by a live vulnerability of its namespace whose fix for that package is newer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import gojson, versions
from .config import libpq_conninfo
from .logs import Logger
from .model import (
    MAX_NAME,
    BackendError,
    BadRequest,
    FeatureKey,
    FixedIn,
    Match,
    Namespace,
    NotFound,
    Vulnerability,
    parse_severity,
)

SCHEMA_FILE = Path(__file__).resolve().parent / "schema.sql"
UPDATER_LAST = "updater/last"  # keyvalue key of the last successful update (Unix seconds)

FIXED_IN_OTHER_NAMESPACE = (
    "could not insert an invalid vulnerability that contains FixedIn FeatureVersion that are not in "
    "the same namespace as the Vulnerability"
)


class DatabaseUnavailable(Exception):
    """The database cannot be opened; str() is the message Clair logs before exiting."""


# --- the JSON data file -----------------------------------------------------------------------


@dataclass
class Dataset:
    namespaces: list[Namespace] = field(default_factory=list)
    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    updated: int | None = None  # Unix seconds of the "last update"; None: unknown


def _fixed_version(value: Any) -> str:
    if value in (None, "", "None", versions.MAX_VERSION):
        return versions.MAX_VERSION
    return str(value)


def parse_dataset(data: dict[str, Any]) -> Dataset:
    """Validate our JSON data format (see README.md) into a Dataset."""
    formats: dict[str, str] = {}
    dataset = Dataset()
    for item in data.get("namespaces") or []:
        namespace = Namespace(item["Name"], item.get("VersionFormat") or "")
        formats[namespace.name] = namespace.compare_format
        dataset.namespaces.append(namespace)
    for item in data.get("vulnerabilities") or []:
        name, namespace = item.get("Name"), item.get("NamespaceName")
        if not name or not namespace:
            raise ValueError(f"vulnerability without Name or NamespaceName: {item!r}")
        if namespace not in formats:
            guessed = Namespace(namespace, versions.format_for_namespace(namespace, None))
            formats[namespace] = guessed.version_format
            dataset.namespaces.append(guessed)
        fixes = []
        for fix in item.get("FixedIn") or []:
            if fix.get("NamespaceName") not in (None, "", namespace):
                raise ValueError(f"{namespace} {name}: {FIXED_IN_OTHER_NAMESPACE}")
            version = _fixed_version(fix.get("Version"))
            if version != versions.MAX_VERSION:
                versions.valid(formats[namespace], version)
            fixes.append(FixedIn(fix["Name"], version))
        metadata = item.get("Metadata")
        dataset.vulnerabilities.append(
            Vulnerability(
                name=name,
                namespace=namespace,
                severity=parse_severity(item.get("Severity") or "Unknown"),
                description=item.get("Description") or "",
                link=item.get("Link") or "",
                metadata=gojson.as_go_interface(metadata) if metadata is not None else None,
                fixed_in=fixes,
            )
        )
    if data.get("updated") is not None:
        dataset.updated = int(data["updated"])
    return dataset


def read_dataset(source: str | Path | dict[str, Any]) -> Dataset:
    if isinstance(source, dict):
        return parse_dataset(source)
    return parse_dataset(json.loads(Path(source).read_text(encoding="utf-8")))


# --- indexed layers ---------------------------------------------------------------------------


@dataclass
class StoredLayer:
    id: int
    name: str
    engine_version: int
    parent: str | None
    namespace: str | None
    added: list[FeatureKey] = field(default_factory=list)  # Layer_diff_FeatureVersion 'add' rows
    removed: list[FeatureKey] = field(default_factory=list)  # ... and 'del' rows


class LayerIndex:
    """Layers with their parent links and feature diffs, as Clair's Layer tables hold them."""

    def __init__(self) -> None:
        self._layers: dict[str, StoredLayer] = {}
        self._next_id = 1
        self._lock = threading.RLock()

    def get(self, name: str) -> StoredLayer | None:
        with self._lock:
            return self._layers.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._layers)

    def chain(self, name: str) -> list[StoredLayer]:
        """The layer and its ancestors, base first."""
        with self._lock:
            chain = []
            seen = set()
            current = self._layers.get(name)
            while current is not None and current.name not in seen:
                seen.add(current.name)
                chain.append(current)
                current = self._layers.get(current.parent) if current.parent else None
            return list(reversed(chain))

    def features(self, name: str) -> dict[FeatureKey, str]:
        """Cumulative feature versions of a layer: {key: name of the layer that added it}."""
        result: dict[FeatureKey, str] = {}
        for layer in self.chain(name):
            for key in layer.added:
                result[key] = layer.name
            for key in layer.removed:
                result.pop(key, None)
        return result

    def insert(self, layer: StoredLayer) -> bool:
        """Add a layer; False if the name is taken (Clair swallows that unique violation)."""
        with self._lock:
            if layer.name in self._layers:
                return False
            if layer.parent is not None and layer.parent not in self._layers:
                raise BackendError()  # the parent_id foreign key would fail
            layer.id = self._next_id
            self._next_id += 1
            self._layers[layer.name] = layer
            return True

    def delete(self, name: str) -> bool:
        """Delete a layer and, as `ON DELETE CASCADE` does, all its descendants."""
        with self._lock:
            if name not in self._layers:
                return False
            doomed = {name}
            changed = True
            while changed:
                changed = False
                for layer in self._layers.values():
                    if layer.parent in doomed and layer.name not in doomed:
                        doomed.add(layer.name)
                        changed = True
            for doomed_name in doomed:
                del self._layers[doomed_name]
            return True


# --- the store interface ----------------------------------------------------------------------


def apply_fixed_in_diff(current: list[FixedIn], diff: list[FixedIn]) -> tuple[list[FixedIn], bool]:
    """Merge new fixes into old ones as Clair's applyFixedInDiff: MIN_VERSION removes a fix."""
    merged = {fix.name: fix for fix in current}
    changes = {fix.name: fix for fix in diff}
    different = False
    for name, fix in changes.items():
        if name not in merged:
            if fix.version != versions.MIN_VERSION:
                merged[name] = fix
                different = True
        elif fix.version == versions.MIN_VERSION:
            del merged[name]
            different = True
        elif fix.version != merged[name].version:
            merged[name] = fix
            different = True
    return list(merged.values()), different


def _cast_metadata(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    # Clair compares json.Unmarshal(json.Marshal(new)) with the stored map; null stays nil.
    return gojson.as_go_interface(metadata) if metadata is not None else None


class Store(ABC):
    """Clair's datastore as the API uses it. Layers always live in `self.layers` (memory)."""

    def __init__(self, logger: Logger | None = None) -> None:
        self.layers = LayerIndex()
        self.logger = logger or Logger(stream=None)

    # Implemented by the backends.

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def check_available(self) -> None:
        """Raise BackendError when the database cannot be queried."""

    @abstractmethod
    def list_namespaces(self) -> list[Namespace]: ...

    @abstractmethod
    def ensure_namespace(self, name: str, version_format: str) -> Namespace: ...

    @abstractmethod
    def matches(
        self, features: Iterable[FeatureKey], formats: dict[str, str]
    ) -> dict[FeatureKey, list[Match]]:
        """Live vulnerabilities affecting each feature version (formats: namespace -> version format)."""

    @abstractmethod
    def list_vulnerabilities(
        self, namespace: str, limit: int, start_id: int
    ) -> tuple[list[Vulnerability], int]:
        """Vulnerabilities with id >= start_id, by id; next page's first id or -1."""

    @abstractmethod
    def find_vulnerability(self, namespace: str, name: str) -> Vulnerability: ...

    @abstractmethod
    def delete_vulnerability(self, namespace: str, name: str) -> None: ...

    @abstractmethod
    def get_key_value(self, key: str) -> str | None: ...

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which _find_for_update/_soft_delete/_insert run atomically."""

    @abstractmethod
    def _find_for_update(self, tx: Any, namespace: str, name: str) -> Vulnerability | None: ...

    @abstractmethod
    def _soft_delete(self, tx: Any, vulnerability_id: int) -> None: ...

    @abstractmethod
    def _insert(self, tx: Any, vulnerability: Vulnerability) -> int: ...

    def close(self) -> None:  # noqa: B027 - only the PostgreSQL store has something to close
        """Release database connections."""

    # Shared logic.

    def namespace_formats(self) -> dict[str, str]:
        return {ns.name: ns.compare_format for ns in self.list_namespaces()}

    def insert_vulnerability(
        self,
        vulnerability: Vulnerability,
        *,
        only_fixed_in: bool = False,
        fixed_in_namespaces: list[str] | None = None,
    ) -> None:
        """Clair's insertVulnerability: create, or replace (soft-delete + insert) when changed."""
        if not vulnerability.name or not vulnerability.namespace:
            raise BadRequest("insertVulnerability needs at least the Name and the Namespace")
        for namespace in fixed_in_namespaces or []:
            if namespace and namespace != vulnerability.namespace:
                self.logger.warning(FIXED_IN_OTHER_NAMESPACE)
                raise BadRequest(FIXED_IN_OTHER_NAMESPACE)
        vulnerability = copy.deepcopy(vulnerability)
        with self._transaction() as tx:
            existing = self._find_for_update(tx, vulnerability.namespace, vulnerability.name)
            if only_fixed_in:
                if existing is None:
                    raise NotFound()
                fixes = vulnerability.fixed_in
                vulnerability = copy.deepcopy(existing)
                vulnerability.fixed_in = fixes
            if existing is not None:
                metadata_changed = (
                    vulnerability.description != existing.description
                    or vulnerability.link != existing.link
                    or vulnerability.severity != existing.severity
                    or _cast_metadata(vulnerability.metadata) != existing.metadata
                )
                vulnerability.fixed_in, fixes_changed = apply_fixed_in_diff(
                    existing.fixed_in, vulnerability.fixed_in
                )
                if not metadata_changed and not fixes_changed:
                    return
                self._soft_delete(tx, existing.id)
            else:
                vulnerability.fixed_in = [
                    fix for fix in vulnerability.fixed_in if fix.version != versions.MIN_VERSION
                ]
            vulnerability.id = self._insert(tx, vulnerability)

    def load(self, dataset: Dataset) -> None:
        """Put a dataset in: its namespaces, vulnerabilities and the update time."""
        for namespace in dataset.namespaces:
            self.ensure_namespace(namespace.name, namespace.version_format)
        for vulnerability in dataset.vulnerabilities:
            self.insert_vulnerability(vulnerability)
        if dataset.updated is not None:
            self.set_key_value(UPDATER_LAST, str(dataset.updated))

    @abstractmethod
    def set_key_value(self, key: str, value: str) -> None: ...

    # The updater's lock (database/pgsql/lock.go): one row per name, with its owner and expiry.

    @abstractmethod
    def lock(self, name: str, owner: str, duration: float, renew: bool) -> tuple[bool, float]:
        """Take (or with `renew`, extend our own) lock; (whether we hold it, the new expiry as
        Unix seconds). Taking first prunes expired locks; a lock someone else holds is refused."""

    @abstractmethod
    def unlock(self, name: str, owner: str) -> None: ...

    @abstractmethod
    def find_lock(self, name: str) -> tuple[str, float] | None:
        """(owner, expiry in Unix seconds) of a lock, expired or not."""


# --- in memory --------------------------------------------------------------------------------


class MemoryStore(Store):
    """Everything in memory. Set `down = True` to act like a database that stopped answering."""

    def __init__(self, logger: Logger | None = None) -> None:
        super().__init__(logger)
        self.down = False
        self._namespaces: dict[str, Namespace] = {}
        self._vulnerabilities: dict[int, Vulnerability] = {}  # live ones
        self._by_feature: dict[tuple[str, str], set[int]] = {}
        self._key_values: dict[str, str] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._next_id = 1
        self._lock = threading.RLock()

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any], logger: Logger | None = None) -> MemoryStore:
        store = cls(logger)
        store.load(read_dataset(source))
        return store

    def ping(self) -> bool:
        return not self.down

    def check_available(self) -> None:
        if self.down:
            raise BackendError()

    def list_namespaces(self) -> list[Namespace]:
        self.check_available()
        with self._lock:
            return list(self._namespaces.values())

    def ensure_namespace(self, name: str, version_format: str) -> Namespace:
        self.check_available()
        if not name:
            raise BadRequest("could not find/insert invalid Namespace")
        if len(name) > MAX_NAME or len(version_format) > MAX_NAME:
            raise BackendError()
        with self._lock:
            return self._namespaces.setdefault(name, Namespace(name, version_format))

    def matches(
        self, features: Iterable[FeatureKey], formats: dict[str, str]
    ) -> dict[FeatureKey, list[Match]]:
        self.check_available()
        result: dict[FeatureKey, list[Match]] = {}
        with self._lock:
            for key in features:
                for vulnerability_id in sorted(self._by_feature.get((key.namespace, key.name), ())):
                    vulnerability = self._vulnerabilities[vulnerability_id]
                    for fix in vulnerability.fixed_in:
                        if fix.name == key.name and _affected(
                            formats.get(key.namespace, ""), key.version, fix.version
                        ):
                            result.setdefault(key, []).append(Match(vulnerability, fix.version))
        return result

    def list_vulnerabilities(
        self, namespace: str, limit: int, start_id: int
    ) -> tuple[list[Vulnerability], int]:
        self.check_available()
        with self._lock:
            if namespace not in self._namespaces:
                raise NotFound()
            ids = sorted(
                vid
                for vid, v in self._vulnerabilities.items()
                if v.namespace == namespace and vid >= start_id
            )
        page = [self._vulnerabilities[vid] for vid in ids[:limit]]
        return page, ids[limit] if len(ids) > limit else -1

    def find_vulnerability(self, namespace: str, name: str) -> Vulnerability:
        self.check_available()
        with self._lock:
            found = self._find(namespace, name)
        if found is None:
            raise NotFound()
        return found

    def delete_vulnerability(self, namespace: str, name: str) -> None:
        with self._transaction() as tx:
            found = self._find_for_update(tx, namespace, name)
            if found is None:
                raise NotFound()
            self._soft_delete(tx, found.id)

    def get_key_value(self, key: str) -> str | None:
        self.check_available()
        return self._key_values.get(key)

    def set_key_value(self, key: str, value: str) -> None:
        self.check_available()
        self._key_values[key] = value

    def lock(self, name: str, owner: str, duration: float, renew: bool) -> tuple[bool, float]:
        self.check_available()
        until = time.time() + duration
        with self._lock:
            held = self._locks.get(name)
            if renew:
                if held is not None and held[0] == owner:
                    self._locks[name] = (owner, until)
                    return True, until
                return False, until
            self._locks = {n: lock for n, lock in self._locks.items() if lock[1] >= time.time()}
            if name in self._locks:
                return False, until
            self._locks[name] = (owner, until)
            return True, until

    def unlock(self, name: str, owner: str) -> None:
        self.check_available()
        with self._lock:
            if self._locks.get(name, ("", 0.0))[0] == owner:
                del self._locks[name]

    def find_lock(self, name: str) -> tuple[str, float] | None:
        self.check_available()
        return self._locks.get(name)

    def _find(self, namespace: str, name: str) -> Vulnerability | None:
        for vulnerability in self._vulnerabilities.values():
            if vulnerability.namespace == namespace and vulnerability.name == name:
                return vulnerability
        return None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.check_available()
        with self._lock:
            yield None

    def _find_for_update(self, tx: Any, namespace: str, name: str) -> Vulnerability | None:
        return self._find(namespace, name)

    def _soft_delete(self, tx: Any, vulnerability_id: int) -> None:
        vulnerability = self._vulnerabilities.pop(vulnerability_id)
        for fix in vulnerability.fixed_in:
            self._by_feature.get((vulnerability.namespace, fix.name), set()).discard(vulnerability_id)

    def _insert(self, tx: Any, vulnerability: Vulnerability) -> int:
        # One fix per package, the first one given, as the (vulnerability, feature) unique key keeps it.
        firsts: dict[str, FixedIn] = {}
        for fix in vulnerability.fixed_in:
            firsts.setdefault(fix.name, fix)
        vulnerability.fixed_in = list(firsts.values())
        too_long = [vulnerability.name, vulnerability.link] + [f.name for f in vulnerability.fixed_in]
        if any(len(text) > MAX_NAME for text in too_long + [f.version for f in vulnerability.fixed_in]):
            raise BackendError()
        self.ensure_namespace(vulnerability.namespace, "")
        vulnerability.id = self._next_id
        self._next_id += 1
        self._vulnerabilities[vulnerability.id] = vulnerability
        for fix in vulnerability.fixed_in:
            self._by_feature.setdefault((vulnerability.namespace, fix.name), set()).add(vulnerability.id)
        return vulnerability.id


def _affected(version_format: str, installed: str, fixed: str) -> bool:
    """Installed version older than the fix (Clair's `Compare(installed, fixed) < 0`)."""
    try:
        return versions.compare(version_format, installed, fixed) < 0
    except ValueError:
        return False


# --- PostgreSQL -------------------------------------------------------------------------------

_MIGRATION_HEADER = re.compile(r"^-- migration (\d+)\b.*$", re.MULTILINE)
_MIGRATION_LOCK = 0x434C4149  # pg_advisory_lock key, as remind101/migrate serialises migrations

_VULNERABILITY_COLUMNS = """
    SELECT v.id, v.name, n.name, v.description, v.link, v.severity, v.metadata
    FROM vulnerability v JOIN namespace n ON v.namespace_id = n.id"""


def migrations() -> list[tuple[int, str]]:
    """The numbered sections of schema.sql (one per Clair migration)."""
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    headers = list(_MIGRATION_HEADER.finditer(text))
    sections = []
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        sections.append((int(header.group(1)), text[header.start() : end]))
    return sections


def migrate(connection: Any) -> list[int]:
    """Apply the schema sections not yet recorded in schema_migrations; return their numbers."""
    applied = []
    connection.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer primary key not null)"
        )
        done = {row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
        for number, sql in migrations():
            if number in done:
                continue
            with connection.transaction():
                connection.execute(sql)
            applied.append(number)
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def connect(source: str, *, libpq: bool = False) -> Any:
    """A psycopg connection (autocommit); raises DatabaseUnavailable.

    `source` is read as Clair's driver lib/pq reads it, unless `libpq` is true (then it goes to
    libpq unchanged, e.g. for the seed tool).
    """
    import psycopg

    try:
        return psycopg.connect(source if libpq else libpq_conninfo(source), autocommit=True)
    except psycopg.Error as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatabaseUnavailable(f"pgsql: could not open database: {message}") from None


def _metadata_text(metadata: dict[str, Any] | None) -> str:
    # MetadataMap.Value(): json.Marshal of the map; a nil map is the text "null".
    return gojson.dumps(gojson.as_go_interface(metadata)) if metadata is not None else "null"


class PostgresStore(Store):
    """Vulnerability data in Clair v2.1.8's own tables; opening it pings and migrates like Clair."""

    def __init__(self, source: str, logger: Logger | None = None, *, libpq: bool = False) -> None:
        super().__init__(logger)
        import psycopg

        self._psycopg = psycopg
        self.source = source
        self._conninfo = source if libpq else libpq_conninfo(source)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        connection = connect(source, libpq=libpq)
        try:
            self.logger.info("running database migrations")
            migrate(connection)
            self.logger.info("database migration ran successfully")
        except psycopg.Error as err:
            connection.close()
            raise DatabaseUnavailable(f"pgsql: an error occured while running migrations: {err}") from None
        self._release(connection)

    # connections

    def _acquire(self) -> Any:
        """An idle connection that still works, else a new one.

        Go's database/sql retries a query on a fresh connection when a pooled one turns out
        to be dead, so a restarted PostgreSQL is invisible to Clair; checking idle connections
        before use has the same effect.
        """
        while True:
            with self._lock:
                if not self._idle:
                    break
                connection = self._idle.pop()
            try:
                connection.execute("SELECT 1")
                return connection
            except self._psycopg.Error:
                connection.close()
        return self._psycopg.connect(self._conninfo, autocommit=True)

    def _release(self, connection: Any) -> None:
        idle = self._psycopg.pq.TransactionStatus.IDLE
        if connection.closed or connection.broken or connection.info.transaction_status != idle:
            connection.close()
            return
        with self._lock:
            self._idle.append(connection)

    @contextlib.contextmanager
    def _connection(self, description: str) -> Iterator[Any]:
        """A pooled connection; database errors are logged and masked as BACKEND_ERROR."""
        try:
            connection = self._acquire()
        except self._psycopg.Error as err:
            self.logger.error("Handled Database Error", Description=description, error=str(err).strip())
            raise BackendError() from None
        try:
            yield connection
        except self._psycopg.Error as err:
            self.logger.error("Handled Database Error", Description=description, error=str(err).strip())
            raise BackendError() from None
        finally:
            self._release(connection)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def ping(self) -> bool:
        try:
            connection = self._acquire()  # runs a query on a pooled connection, or connects
        except self._psycopg.Error:
            return False
        self._release(connection)
        return True

    def check_available(self) -> None:
        with self._connection("ping"):
            pass

    # reads

    def list_namespaces(self) -> list[Namespace]:
        with self._connection("listNamespace") as connection:
            rows = connection.execute("SELECT id, name, version_format FROM namespace ORDER BY id").fetchall()
        if any(row[1] is None or row[2] is None for row in rows):
            # Go cannot scan NULL into a string: "sql: Scan error ...", masked by handleError.
            self.logger.error("Handled Database Error", Description="listNamespace.Scan()")
            raise BackendError()
        return [Namespace(row[1], row[2]) for row in rows]

    def _vulnerability(self, connection: Any, row: tuple[Any, ...]) -> Vulnerability:
        vid, name, namespace, description, link, severity, metadata = row
        if description is None or link is None:
            self.logger.error("Handled Database Error", Description="searchVulnerability.Scan()")
            raise BackendError()
        fixes = connection.execute(
            "SELECT vfif.version, f.name FROM vulnerability_fixedin_feature vfif "
            "JOIN feature f ON vfif.feature_id = f.id WHERE vfif.vulnerability_id = %s ORDER BY vfif.id",
            (vid,),
        ).fetchall()
        return Vulnerability(
            id=vid,
            name=name,
            namespace=namespace,
            description=description,
            link=link,
            severity=str(severity),
            metadata=gojson.loads_interface(metadata) if metadata is not None else None,
            fixed_in=[FixedIn(fix_name, version) for version, fix_name in fixes],
        )

    def find_vulnerability(self, namespace: str, name: str) -> Vulnerability:
        with self._connection("findVulnerability") as connection:
            found = self._find_for_update(connection, namespace, name, lock=False)
        if found is None:
            raise NotFound()
        return found

    def list_vulnerabilities(
        self, namespace: str, limit: int, start_id: int
    ) -> tuple[list[Vulnerability], int]:
        with self._connection("searchVulnerabilityByNamespace") as connection:
            if (
                connection.execute("SELECT id FROM namespace WHERE name = %s", (namespace,)).fetchone()
                is None
            ):
                raise NotFound()
            rows = connection.execute(
                _VULNERABILITY_COLUMNS + " WHERE n.name = %s AND v.deleted_at IS NULL AND v.id >= %s"
                " ORDER BY v.id LIMIT %s",
                (namespace, start_id, limit + 1),
            ).fetchall()
            page = [self._vulnerability(connection, row) for row in rows[:limit]]
        return page, rows[limit][0] if len(rows) > limit else -1

    def matches(
        self, features: Iterable[FeatureKey], formats: dict[str, str]
    ) -> dict[FeatureKey, list[Match]]:
        wanted: dict[tuple[str, str], list[FeatureKey]] = {}
        for key in features:
            wanted.setdefault((key.namespace, key.name), []).append(key)
        if not wanted:
            return {}
        namespaces = sorted({namespace for namespace, _ in wanted})
        names = sorted({name for _, name in wanted})
        result: dict[FeatureKey, list[Match]] = {}
        with self._connection("searchFeatureVersionVulnerability") as connection:
            rows = connection.execute(
                "SELECT fn.name, f.name, vfif.version, v.id, v.name, vn.name, v.description, v.link,"
                " v.severity, v.metadata"
                " FROM vulnerability_fixedin_feature vfif"
                " JOIN feature f ON vfif.feature_id = f.id"
                " JOIN namespace fn ON f.namespace_id = fn.id"
                " JOIN vulnerability v ON vfif.vulnerability_id = v.id"
                " JOIN namespace vn ON v.namespace_id = vn.id"
                " WHERE v.deleted_at IS NULL AND fn.name = ANY(%s) AND f.name = ANY(%s)"
                " ORDER BY v.id",
                (namespaces, names),
            ).fetchall()
        for (
            feature_namespace,
            feature_name,
            fixed,
            vid,
            name,
            namespace,
            description,
            link,
            severity,
            metadata,
        ) in rows:
            if description is None or link is None:
                raise BackendError()
            vulnerability = Vulnerability(
                id=vid,
                name=name,
                namespace=namespace,
                description=description,
                link=link,
                severity=str(severity),
                metadata=gojson.loads_interface(metadata) if metadata is not None else None,
            )
            for key in wanted.get((feature_namespace, feature_name), []):
                if _affected(formats.get(key.namespace, ""), key.version, fixed):
                    result.setdefault(key, []).append(Match(vulnerability, fixed))
        return result

    def get_key_value(self, key: str) -> str | None:
        with self._connection("searchKeyValue") as connection:
            row = connection.execute("SELECT value FROM keyvalue WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    # writes

    def ensure_namespace(self, name: str, version_format: str) -> Namespace:
        if not name:
            raise BadRequest("could not find/insert invalid Namespace")
        with self._connection("soiNamespace") as connection:
            return self._ensure_namespace(connection, name, version_format)[1]

    def _ensure_namespace(self, connection: Any, name: str, version_format: str) -> tuple[int, Namespace]:
        connection.execute(
            "INSERT INTO namespace (name, version_format) SELECT %s, %s"
            " WHERE NOT EXISTS (SELECT 1 FROM namespace WHERE name = %s)",
            (name, version_format, name),
        )
        row = connection.execute(
            "SELECT id, name, version_format FROM namespace WHERE name = %s", (name,)
        ).fetchone()
        return row[0], Namespace(row[1], row[2] or "")

    def set_key_value(self, key: str, value: str) -> None:
        with self._connection("InsertKeyValue") as connection, connection.transaction():
            updated = connection.execute("UPDATE keyvalue SET value = %s WHERE key = %s", (value, key))
            if updated.rowcount == 0:
                connection.execute("INSERT INTO keyvalue (key, value) VALUES (%s, %s)", (key, value))

    def lock(self, name: str, owner: str, duration: float, renew: bool) -> tuple[bool, float]:
        until = time.time() + duration
        stamp = datetime.fromtimestamp(until, timezone.utc)
        try:
            if renew:
                with self._connection("updateLock") as connection:
                    done = connection.execute(
                        "UPDATE lock SET until = %s WHERE name = %s AND owner = %s", (stamp, name, owner)
                    )
                return done.rowcount > 0, until
            with self._connection("removeLockExpired") as connection:
                connection.execute("DELETE FROM lock WHERE until < CURRENT_TIMESTAMP")
            connection = self._acquire()
        except (BackendError, self._psycopg.Error):
            return False, until
        try:
            connection.execute(
                "INSERT INTO lock (name, owner, until) VALUES (%s, %s, %s)", (name, owner, stamp)
            )
        except self._psycopg.errors.UniqueViolation:  # held by someone else: not an error to log
            return False, until
        except self._psycopg.Error as err:
            self.logger.error("Handled Database Error", Description="insertLock", error=str(err).strip())
            return False, until
        finally:
            self._release(connection)
        return True, until

    def unlock(self, name: str, owner: str) -> None:
        with self._connection("removeLock") as connection:
            connection.execute("DELETE FROM lock WHERE name = %s AND owner = %s", (name, owner))

    def find_lock(self, name: str) -> tuple[str, float] | None:
        with self._connection("searchLock") as connection:
            row = connection.execute("SELECT owner, until FROM lock WHERE name = %s", (name,)).fetchone()
        return (str(row[0]), row[1].timestamp()) if row else None

    def delete_vulnerability(self, namespace: str, name: str) -> None:
        with self._connection("removeVulnerability") as connection:
            row = connection.execute(
                "UPDATE vulnerability SET deleted_at = CURRENT_TIMESTAMP"
                " WHERE namespace_id = (SELECT id FROM namespace WHERE name = %s)"
                " AND name = %s AND deleted_at IS NULL RETURNING id",
                (namespace, name),
            ).fetchone()
        if row is None:
            raise NotFound()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._connection("insertVulnerability") as connection, connection.transaction():
            yield connection

    def _find_for_update(self, tx: Any, namespace: str, name: str, lock: bool = True) -> Vulnerability | None:
        row = tx.execute(
            _VULNERABILITY_COLUMNS
            + " WHERE n.name = %s AND v.name = %s AND v.deleted_at IS NULL"
            + (" FOR UPDATE OF v" if lock else ""),
            (namespace, name),
        ).fetchone()
        return self._vulnerability(tx, row) if row else None

    def _soft_delete(self, tx: Any, vulnerability_id: int) -> None:
        tx.execute(
            "UPDATE vulnerability SET deleted_at = CURRENT_TIMESTAMP WHERE id = %s", (vulnerability_id,)
        )

    def _insert(self, tx: Any, vulnerability: Vulnerability) -> int:
        namespace_id, _ = self._ensure_namespace(tx, vulnerability.namespace, "")
        row = tx.execute(
            "INSERT INTO vulnerability"
            " (namespace_id, name, description, link, severity, metadata, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, CURRENT_TIMESTAMP) RETURNING id",
            (
                namespace_id,
                vulnerability.name,
                vulnerability.description,
                vulnerability.link,
                vulnerability.severity,
                _metadata_text(vulnerability.metadata),
            ),
        ).fetchone()
        vulnerability_id = int(row[0])
        for fix in vulnerability.fixed_in:
            tx.execute(
                "INSERT INTO feature (name, namespace_id) SELECT %s, %s"
                " WHERE NOT EXISTS (SELECT 1 FROM feature WHERE name = %s AND namespace_id = %s)",
                (fix.name, namespace_id, fix.name, namespace_id),
            )
            feature_id = tx.execute(
                "SELECT id FROM feature WHERE name = %s AND namespace_id = %s", (fix.name, namespace_id)
            ).fetchone()[0]
            tx.execute(
                "INSERT INTO vulnerability_fixedin_feature (vulnerability_id, feature_id, version)"
                " SELECT %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM vulnerability_fixedin_feature"
                " WHERE vulnerability_id = %s AND feature_id = %s)",
                (vulnerability_id, feature_id, fix.version, vulnerability_id, feature_id),
            )
        return vulnerability_id
