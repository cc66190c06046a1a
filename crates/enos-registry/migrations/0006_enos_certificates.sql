-- The EnOS device certificates the signer got for its gateways (issue
-- 26): which serial (certSN, decimal) each device holds, its validity,
-- its authority, and what became of it (superseded by a renewal,
-- revoked). Keyed by device and serial: two EnOS environments have two
-- CAs. No foreign key to devices: a deleted device's records stay (with
-- their revocations) for the record. Read from the table on every call,
-- so no trigger or change feed: a replica keeps no copy.
CREATE TABLE enos_certificates (
    product_key      text COLLATE "C" NOT NULL,
    device_key       text COLLATE "C" NOT NULL,
    cert_sn          text COLLATE "C" NOT NULL CHECK (cert_sn ~ '^[0-9]+$'),
    not_before_ms    bigint NOT NULL,
    not_after_ms     bigint NOT NULL,
    issue_authority  text NOT NULL,
    recorded_at_ms   bigint NOT NULL,
    revoked_at_ms    bigint,
    revoked_reason   text,
    superseded_by    text COLLATE "C",
    PRIMARY KEY (product_key, device_key, cert_sn),
    CHECK ((revoked_at_ms IS NULL) = (revoked_reason IS NULL))
);

-- The replicas' role: record, supersede and revoke; nothing is deleted
-- (no DELETE: a revocation is never undone).
GRANT SELECT, INSERT, UPDATE ON enos_certificates TO enos_signer;
