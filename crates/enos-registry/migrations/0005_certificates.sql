-- The signer as the devices' CA (issue 25): the certificates it issued,
-- the one-time enrollment tokens (hashes only), and its own key and
-- chain (one row). No foreign key to devices: a deleted device's
-- certificates stay (revoked) for the CRL, and its tokens (revoked) for
-- the record.
CREATE TABLE certificates (
    serial          text COLLATE "C" PRIMARY KEY,
    product_key     text COLLATE "C" NOT NULL,
    device_key      text COLLATE "C" NOT NULL,
    not_before_ms   bigint NOT NULL,
    not_after_ms    bigint NOT NULL,
    issued_at_ms    bigint NOT NULL,
    revoked_at_ms   bigint,
    revoked_reason  text,
    renewed_by      text COLLATE "C",
    CHECK ((revoked_at_ms IS NULL) = (revoked_reason IS NULL))
);
-- A device's certificates, newest first (listing, revocation by device).
CREATE INDEX certificates_device ON certificates (product_key, device_key, issued_at_ms DESC);
-- The CRL's entries and the replicas' revoked sets.
CREATE INDEX certificates_revoked ON certificates (not_after_ms) WHERE revoked_at_ms IS NOT NULL;
-- The expiry metric: live certificates by end of validity.
CREATE INDEX certificates_expiring ON certificates (not_after_ms)
    WHERE revoked_at_ms IS NULL AND renewed_by IS NULL;

CREATE TABLE enroll_tokens (
    hash           bytea PRIMARY KEY CHECK (length(hash) = 32),
    product_key    text COLLATE "C" NOT NULL,
    device_key     text COLLATE "C" NOT NULL,
    created_at_ms  bigint NOT NULL,
    expires_at_ms  bigint NOT NULL,
    used_at_ms     bigint,
    revoked_at_ms  bigint
);
CREATE INDEX enroll_tokens_device ON enroll_tokens (product_key, device_key);

-- One row at most (the key is always true).
CREATE TABLE ca (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    key_scheme       text NOT NULL,
    key_bytes        bytea NOT NULL,
    key_public_der   bytea NOT NULL,
    chain_der        bytea[] NOT NULL,
    pending_csr_der  bytea,
    created_at_ms    bigint NOT NULL
);

-- A revocation tells every replica to reload its revoked set, in the
-- transaction that revokes (delivered at commit to the sessions that
-- LISTEN enos_certificates). Only a change of revocation notifies: an
-- enrollment or a renewal does not make every replica reload. A
-- trigger, so that any writer (psql, `registry copy`) is seen too.
CREATE FUNCTION enos_certificates_notify_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o USING (serial)
               WHERE n.revoked_at_ms IS DISTINCT FROM o.revoked_at_ms)
       OR EXISTS (SELECT serial FROM new_rows EXCEPT SELECT serial FROM old_rows) THEN
        PERFORM pg_notify('enos_certificates', 'revoked');
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION enos_certificates_notify_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed WHERE revoked_at_ms IS NOT NULL) THEN
        PERFORM pg_notify('enos_certificates', 'revoked');
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION enos_certificates_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('enos_certificates', 'revoked');
    RETURN NULL;
END
$$;
CREATE TRIGGER certificates_notify_update AFTER UPDATE ON certificates
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION enos_certificates_notify_update();
CREATE TRIGGER certificates_notify_insert AFTER INSERT ON certificates
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION enos_certificates_notify_rows();
CREATE TRIGGER certificates_notify_delete AFTER DELETE ON certificates
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION enos_certificates_notify_rows();
CREATE TRIGGER certificates_truncate AFTER TRUNCATE ON certificates
    FOR EACH STATEMENT EXECUTE FUNCTION enos_certificates_notify_all();

-- The replicas' role: record, renew and revoke certificates, make, use
-- and revoke tokens, make and change the CA row. Nothing is deleted by
-- the signer (no DELETE, no TRUNCATE): revocations are never undone.
GRANT SELECT, INSERT, UPDATE ON certificates TO enos_signer;
GRANT SELECT, INSERT, UPDATE ON enroll_tokens TO enos_signer;
GRANT SELECT, INSERT, UPDATE ON ca TO enos_signer;
