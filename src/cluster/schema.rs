//! The coordinator's tables, created and migrated by spillway itself. Each migration is a list of
//! statements with a version; [`migrate`] applies the missing ones in one transaction under a
//! transaction-scoped advisory lock, so nodes starting together serialize here and each sees
//! the others' work. A database whose schema is newer than this binary knows is refused: an old
//! node must not write rows whose meaning changed.
//!
//! Must not: drop or rewrite data in a migration without a version of its own.

use tokio_postgres::Client;

use super::ClusterError;

/// The advisory lock key every spillway migration takes (`pg_advisory_xact_lock`): an arbitrary
/// constant ("spillway" in ASCII, truncated), the same on every node.
const MIGRATION_LOCK: i64 = 0x7370_696c_6c77_6179;

/// Migrations in order; the index + 1 is the version.
const MIGRATIONS: &[&[&str]] = &[
    // 1: nodes and leases.
    &[
        // One node per `node_id`; `incarnation` tells two processes with one id apart. Times are
        // the database's clock. `lease_seconds` is the node's own, so liveness is judged by the
        // period the node promised.
        "CREATE TABLE spillway_nodes (
            node_id text PRIMARY KEY,
            incarnation text NOT NULL,
            advertise text NOT NULL,
            version text NOT NULL,
            lease_seconds double precision NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            stopped_at timestamptz
        )",
        // One lease per shareable unit of work (`kinesis:<stream>:<shard>`, …). `epoch` is the
        // fencing token: +1 whenever the owner changes. `requested_by` / `requested_at`: a
        // hand-off request, which also reserves the lease for the requester for one lease period
        // after it is released. `parent_keys` / `finished`: a child waits until its parents are
        // finished (shard split and merge order).
        "CREATE TABLE spillway_leases (
            lease_key text PRIMARY KEY,
            owner text,
            epoch bigint NOT NULL DEFAULT 0,
            expires_at timestamptz NOT NULL DEFAULT now(),
            requested_by text,
            requested_at timestamptz,
            parent_keys text[] NOT NULL DEFAULT '{}',
            finished boolean NOT NULL DEFAULT false,
            updated_at timestamptz NOT NULL DEFAULT now()
        )",
        "CREATE INDEX spillway_leases_owner ON spillway_leases (owner)",
    ],
    // 2: the shared stream catalog, and each node's YAML streams.
    &[
        // Every stream's catalog record (`StreamRecord` as JSON): API-created streams whole (their
        // definition, tags, version), YAML streams only their version count and fingerprint. A
        // YAML stream and an API stream may share a name (the YAML one runs), hence the key.
        "CREATE TABLE spillway_streams (
            origin text NOT NULL CHECK (origin IN ('yaml', 'api')),
            name text NOT NULL,
            record jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (origin, name)
        )",
        // The fingerprints of the YAML streams a node runs ({name: fingerprint}), compared at
        // every start: a node whose file differs from a live node's is refused.
        "ALTER TABLE spillway_nodes ADD COLUMN yaml_streams jsonb",
    ],
    // 3: what a shared shard's next owner carries on from (see `shard_state`).
    &[
        // Per shard lease: `generation` seeds the shard's batch ids (new when the row is made, so
        // a stream deleted and created again never reuses one); the resume point (a frame
        // boundary's WAL sequence and the shard position after that frame, at or below the
        // checkpoint); the checkpoint (every record below it delivered).
        "CREATE TABLE spillway_shard_state (
            lease_key text PRIMARY KEY,
            generation text NOT NULL,
            resume_sequence bigint NOT NULL DEFAULT 0,
            resume_position text,
            checkpoint bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )",
        // The intents of batches above the checkpoint (the delivery loop's `Intent` as JSON).
        "CREATE TABLE spillway_shard_intents (
            lease_key text NOT NULL,
            batch_id text NOT NULL,
            start_sequence bigint NOT NULL,
            intent jsonb NOT NULL,
            PRIMARY KEY (lease_key, batch_id)
        )",
    ],
    // 4: the replicated WAL's segment index (see `replication`).
    &[
        // One row per segment object of an ingest slot (`ingest:<stream>:<slot>`): the WAL
        // sequences `[first_sequence, end_sequence)` it holds and its key in the object store.
        // Written only under the slot's lease (fenced), before any put in it is acknowledged.
        "CREATE TABLE spillway_wal_segments (
            lease_key text NOT NULL,
            first_sequence bigint NOT NULL,
            end_sequence bigint NOT NULL,
            object_key text NOT NULL,
            bytes bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (lease_key, first_sequence)
        )",
    ],
];

/// The schema version this binary writes and understands.
pub const CURRENT_VERSION: i32 = MIGRATIONS.len() as i32;

/// Bring the schema to [`CURRENT_VERSION`]; returns the version found before.
pub async fn migrate(client: &mut Client) -> Result<i32, ClusterError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS spillway_cluster_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now(),
                applied_by text NOT NULL
            )",
        )
        .await?;
    let found: i32 =
        transaction.query_one("SELECT coalesce(max(version), 0) FROM spillway_cluster_schema", &[]).await?.get(0);
    if found > CURRENT_VERSION {
        return Err(ClusterError::SchemaTooNew { found, known: CURRENT_VERSION });
    }
    let applied_by = format!("spillway {}", env!("CARGO_PKG_VERSION"));
    for (index, statements) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        for statement in *statements {
            transaction.batch_execute(statement).await?;
        }
        let version = index as i32 + 1;
        transaction
            .execute(
                "INSERT INTO spillway_cluster_schema (version, applied_by) VALUES ($1, $2)",
                &[&version, &applied_by],
            )
            .await?;
        tracing::info!(version, "cluster schema migrated");
    }
    transaction.commit().await?;
    Ok(found)
}
