-- The audit trail in the database ([audit.sink] kind = "postgres"): the
-- same records as the JSON lines of the file sink, append-only.
CREATE TABLE audit_records (
    id            bigserial PRIMARY KEY,
    time_ms       bigint NOT NULL,
    event         text NOT NULL,
    identity      text NOT NULL,
    device        text,
    outcome       text NOT NULL,
    -- The whole record, as the file sink writes it.
    record        jsonb NOT NULL
);
CREATE INDEX audit_records_device ON audit_records (device, time_ms);

-- The role the replicas serve as: each replica's login role is made a
-- member of it (GRANT enos_signer TO <login>). Roles belong to the
-- cluster, so it may exist already (another database).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'enos_signer') THEN
        CREATE ROLE enos_signer NOLOGIN;
    END IF;
END
$$;

-- Registry: read and write device records (LOCK TABLE … EXCLUSIVE, which
-- imports take, needs UPDATE).
GRANT SELECT, INSERT, UPDATE, DELETE ON devices TO enos_signer;
GRANT SELECT ON enos_schema_migrations TO enos_signer;
-- Audit: append only. No UPDATE, DELETE or TRUNCATE, and no SELECT (the
-- trail is read by auditors with their own role).
REVOKE ALL ON audit_records FROM PUBLIC;
GRANT INSERT ON audit_records TO enos_signer;
GRANT USAGE ON SEQUENCE audit_records_id_seq TO enos_signer;
