-- The sub-devices of a gateway, for the gateway rules every change is
-- checked against in its transaction (a device with sub-devices is not
-- bound as a sub-device, nor deleted).
CREATE INDEX devices_gateway ON devices (gateway_product_key, gateway_device_key)
    WHERE gateway_product_key IS NOT NULL;
