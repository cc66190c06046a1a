-- Dynamic activation: a device may be registered without a secret (it
-- awaits activation, secret_version 0), and products have secrets of
-- their own (securemode=3).
ALTER TABLE devices ALTER COLUMN sealed_scheme DROP NOT NULL;
ALTER TABLE devices ALTER COLUMN sealed DROP NOT NULL;
ALTER TABLE devices ADD CONSTRAINT devices_secret_or_awaiting CHECK (
    (sealed IS NULL) = (sealed_scheme IS NULL)
    AND (sealed IS NULL) = (secret_version = 0)
);

-- One row per product that has a secret. Read through on every activation
-- credential (never cached), so it needs no change feed.
CREATE TABLE product_secrets (
    product_key    text COLLATE "C" PRIMARY KEY,
    secret_version bigint NOT NULL CHECK (secret_version BETWEEN 1 AND 4294967295),
    sealed_scheme  text NOT NULL,
    sealed         bytea NOT NULL,
    created_at_ms  bigint NOT NULL,
    updated_at_ms  bigint NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON product_secrets TO enos_signer;
