"""The official EnOS Python SDK (enos-mqtt-sdk-python 0.1.1), connected to
the sandbox and publishing measurepoints: the footprint the rss bench
compares the agent with. Arguments: URI PRODUCT_KEY DEVICE_KEY
SECRET_FILE MESSAGES RATE. Prints "connected" once the MQTT session is up
(the SDK's connect() also returns after a timeout, so is_connected() is
asked), "done N" at the end with N the messages the SDK accepted; any
failure goes to stderr with a non-zero exit. The bench reads its RSS
meanwhile."""
import sys
import time

from enos.core.MqttClient import MqttClient
from enos.message.upstream.tsl.MeasurepointPostRequest import MeasurepointPostRequest

uri, pk, dk, secret_file, messages, rate = sys.argv[1:7]
with open(secret_file) as f:
    secret = f.read().strip()
client = MqttClient(uri, pk, dk, secret)
client.get_profile().set_auto_reconnect(True)
client.connect()
if not client.is_connected():
    sys.exit("the SDK did not connect to " + uri)
print("connected", flush=True)
sys.stdin.readline()  # the bench measures the idle client, then says go
interval = 1.0 / float(rate)
start = time.monotonic()
published = 0
for n in range(int(messages)):
    request = MeasurepointPostRequest.builder() \
        .add_measurepoint("temp", n % 40 + 0.5) \
        .add_measurepoint("pressure", 1013) \
        .set_timestamp(int(time.time() * 1000)) \
        .build()
    client.fast_publish(request)  # raises when not published
    published += 1
    pause = start + (n + 1) * interval - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print("done", published, flush=True)
sys.stdin.readline()
client.close()
