-- Tables for config/postgres.yaml. docker-compose.yml (profile `postgres`) runs this file in the
-- `spillway` database as the `spillway` role when the PostgreSQL container starts the first time;
-- elsewhere: psql "postgres://spillway@host/spillway" -f config/postgres-bootstrap.sql
-- (after CREATE ROLE spillway LOGIN PASSWORD '…'; CREATE DATABASE spillway OWNER spillway;).
CREATE TABLE IF NOT EXISTS events (
  id bigint NOT NULL,
  at timestamptz,
  service text,
  level text,
  status integer,
  latency_ms numeric,
  attrs jsonb,
  message text,
  loaded_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS documents (
  doc jsonb NOT NULL,
  loaded_at timestamptz NOT NULL DEFAULT now()
);
-- spillway creates spillway_batches itself (CREATE TABLE IF NOT EXISTS) at start; or create it
-- ahead and grant INSERT, SELECT on it if the role may not create tables:
CREATE TABLE IF NOT EXISTS spillway_batches (
  stream text NOT NULL,
  batch_id uuid NOT NULL,
  target text NOT NULL,
  row_count bigint NOT NULL,
  failures jsonb NOT NULL DEFAULT '[]',
  committed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, batch_id)
);
