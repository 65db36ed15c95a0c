-- Clair v2.1.8's PostgreSQL schema: what its six migrations
-- (database/pgsql/migrations/0000[1-6]_*.go) leave in a fresh database.
--
-- The file can be run as a whole with psql on an empty database. The simulator instead runs it
-- section by section: each "-- migration N" section is applied in its own transaction unless
-- schema_migrations already records N, as Clair's migrator (remind101/migrate) does on start-up.
-- Unquoted names are folded to lower case by PostgreSQL, so the tables are namespace, layer, ...

CREATE TABLE IF NOT EXISTS schema_migrations (version integer primary key not null);

-- migration 1
-- In Clair this step only drops the tables of an older migration tool (goose) when present;
-- on a fresh database it changes nothing but is still recorded.
INSERT INTO schema_migrations (version) VALUES (1);

-- migration 2: the initial schema
CREATE TABLE IF NOT EXISTS namespace (
    id   SERIAL PRIMARY KEY,
    name VARCHAR(128) NULL
);

CREATE TABLE IF NOT EXISTS layer (
    id            SERIAL PRIMARY KEY,
    name          VARCHAR(128) NOT NULL UNIQUE,
    engineversion SMALLINT NOT NULL,
    parent_id     INT NULL REFERENCES layer ON DELETE CASCADE,
    namespace_id  INT NULL REFERENCES namespace,
    created_at    TIMESTAMP WITH TIME ZONE
);
CREATE INDEX ON layer (parent_id);
CREATE INDEX ON layer (namespace_id);

CREATE TABLE IF NOT EXISTS feature (
    id           SERIAL PRIMARY KEY,
    namespace_id INT NOT NULL REFERENCES namespace,
    name         VARCHAR(128) NOT NULL,
    UNIQUE (namespace_id, name)
);

CREATE TABLE IF NOT EXISTS featureversion (
    id         SERIAL PRIMARY KEY,
    feature_id INT NOT NULL REFERENCES feature,
    version    VARCHAR(128) NOT NULL
);
CREATE INDEX ON featureversion (feature_id);

CREATE TYPE modification AS ENUM ('add', 'del');

-- A layer's feature versions relative to its parent.
CREATE TABLE IF NOT EXISTS layer_diff_featureversion (
    id                SERIAL PRIMARY KEY,
    layer_id          INT NOT NULL REFERENCES layer ON DELETE CASCADE,
    featureversion_id INT NOT NULL REFERENCES featureversion,
    modification      modification NOT NULL,
    UNIQUE (layer_id, featureversion_id)
);
CREATE INDEX ON layer_diff_featureversion (layer_id);
CREATE INDEX ON layer_diff_featureversion (featureversion_id);
CREATE INDEX ON layer_diff_featureversion (featureversion_id, layer_id);

CREATE TYPE severity AS ENUM ('Unknown', 'Negligible', 'Low', 'Medium', 'High', 'Critical', 'Defcon1');

-- Updated vulnerabilities are not changed in place: the old row gets deleted_at, a new row is added.
CREATE TABLE IF NOT EXISTS vulnerability (
    id           SERIAL PRIMARY KEY,
    namespace_id INT NOT NULL REFERENCES namespace,
    name         VARCHAR(128) NOT NULL,
    description  TEXT NULL,
    link         VARCHAR(128) NULL,
    severity     severity NOT NULL,
    metadata     TEXT NULL,
    created_at   TIMESTAMP WITH TIME ZONE,
    deleted_at   TIMESTAMP WITH TIME ZONE NULL
);

-- The version that fixes a vulnerability in a package; '#MAXV#' means no fix is known.
CREATE TABLE IF NOT EXISTS vulnerability_fixedin_feature (
    id               SERIAL PRIMARY KEY,
    vulnerability_id INT NOT NULL REFERENCES vulnerability ON DELETE CASCADE,
    feature_id       INT NOT NULL REFERENCES feature,
    version          VARCHAR(128) NOT NULL,
    UNIQUE (vulnerability_id, feature_id)
);
CREATE INDEX ON vulnerability_fixedin_feature (feature_id, vulnerability_id);

-- Precomputed by Clair: which feature versions a vulnerability affects.
CREATE TABLE IF NOT EXISTS vulnerability_affects_featureversion (
    id                SERIAL PRIMARY KEY,
    vulnerability_id  INT NOT NULL REFERENCES vulnerability ON DELETE CASCADE,
    featureversion_id INT NOT NULL REFERENCES featureversion,
    fixedin_id        INT NOT NULL REFERENCES vulnerability_fixedin_feature ON DELETE CASCADE,
    UNIQUE (vulnerability_id, featureversion_id)
);
CREATE INDEX ON vulnerability_affects_featureversion (fixedin_id);
CREATE INDEX ON vulnerability_affects_featureversion (featureversion_id, vulnerability_id);

-- Flags such as 'updater/last' (Unix seconds of the last successful update, as text).
CREATE TABLE IF NOT EXISTS keyvalue (
    id    SERIAL PRIMARY KEY,
    key   VARCHAR(128) NOT NULL UNIQUE,
    value TEXT
);

CREATE TABLE IF NOT EXISTS lock (
    id    SERIAL PRIMARY KEY,
    name  VARCHAR(64) NOT NULL UNIQUE,
    owner VARCHAR(64) NOT NULL,
    until TIMESTAMP WITH TIME ZONE
);
CREATE INDEX ON lock (owner);

CREATE TABLE IF NOT EXISTS vulnerability_notification (
    id                   SERIAL PRIMARY KEY,
    name                 VARCHAR(64) NOT NULL UNIQUE,
    created_at           TIMESTAMP WITH TIME ZONE,
    notified_at          TIMESTAMP WITH TIME ZONE NULL,
    deleted_at           TIMESTAMP WITH TIME ZONE NULL,
    old_vulnerability_id INT NULL REFERENCES vulnerability ON DELETE CASCADE,
    new_vulnerability_id INT NULL REFERENCES vulnerability ON DELETE CASCADE
);
CREATE INDEX ON vulnerability_notification (notified_at);

INSERT INTO schema_migrations (version) VALUES (2);

-- migration 3: indexes
CREATE UNIQUE INDEX namespace_name_key ON namespace (name);
CREATE INDEX vulnerability_name_idx ON vulnerability (name);
CREATE INDEX vulnerability_namespace_id_name_idx ON vulnerability (namespace_id, name);
CREATE UNIQUE INDEX featureversion_feature_id_version_key ON featureversion (feature_id, version);
INSERT INTO schema_migrations (version) VALUES (3);

-- migration 4
CREATE INDEX vulnerability_notification_deleted_at_idx ON vulnerability_notification (deleted_at);
INSERT INTO schema_migrations (version) VALUES (4);

-- migration 5
CREATE INDEX layer_diff_featureversion_layer_id_modification_idx
    ON layer_diff_featureversion (layer_id, modification);
INSERT INTO schema_migrations (version) VALUES (5);

-- migration 6: namespaces get the version format used to compare their package versions
ALTER TABLE namespace ADD COLUMN version_format VARCHAR(128);
UPDATE namespace SET version_format = 'rpm'
    WHERE name LIKE 'rhel%' OR name LIKE 'centos%' OR name LIKE 'fedora%' OR name LIKE 'amzn%'
       OR name LIKE 'scientific%' OR name LIKE 'ol%' OR name LIKE 'oracle%';
UPDATE namespace SET version_format = 'dpkg' WHERE version_format IS NULL;
INSERT INTO schema_migrations (version) VALUES (6);
