-- The device registry: one row per device, the same fields as redb's
-- records. Keys use the "C" collation so that the order of
-- (product_key, device_key) is byte order, as in redb (list paging).
CREATE TABLE devices (
    product_key         text COLLATE "C" NOT NULL,
    device_key          text COLLATE "C" NOT NULL,
    enabled             boolean NOT NULL,
    secret_version      bigint NOT NULL CHECK (secret_version BETWEEN 0 AND 4294967295),
    sealed_scheme       text NOT NULL,
    sealed              bytea NOT NULL,
    gateway_product_key text COLLATE "C",
    gateway_device_key  text COLLATE "C",
    created_at_ms       bigint NOT NULL,
    updated_at_ms       bigint NOT NULL,
    PRIMARY KEY (product_key, device_key),
    CHECK ((gateway_product_key IS NULL) = (gateway_device_key IS NULL))
);

-- Every change of a row tells every replica's cache which record to drop
-- (delivered at commit, to the sessions that LISTEN enos_devices). A
-- trigger, so that any writer (psql, `registry copy`) is seen too. One
-- call per statement over its transition table (a per-row trigger cost a
-- 100k-row import a third of its time); a statement of more than 1000
-- rows (an import) sends '*': every cache is dropped at once.
CREATE FUNCTION enos_devices_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM changed) > 1000 THEN
        PERFORM pg_notify('enos_devices', '*');
    ELSE
        PERFORM pg_notify('enos_devices', product_key || '/' || device_key) FROM changed;
    END IF;
    RETURN NULL;
END
$$;

-- A trigger with a transition table serves one event: three of them.
CREATE TRIGGER devices_notify_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION enos_devices_notify();
CREATE TRIGGER devices_notify_update AFTER UPDATE ON devices
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION enos_devices_notify();
CREATE TRIGGER devices_notify_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION enos_devices_notify();

-- TRUNCATE has no transition table: '*' too.
CREATE FUNCTION enos_devices_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('enos_devices', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_truncate AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION enos_devices_notify_all();
