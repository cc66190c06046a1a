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
-- trigger, so that any writer (psql, `registry copy`) is seen too.
CREATE FUNCTION enos_devices_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('enos_devices', OLD.product_key || '/' || OLD.device_key);
    ELSE
        PERFORM pg_notify('enos_devices', NEW.product_key || '/' || NEW.device_key);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION enos_devices_notify();

-- TRUNCATE fires no row trigger: '*' drops every cached record.
CREATE FUNCTION enos_devices_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('enos_devices', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_truncate AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION enos_devices_notify_all();
