"""MQTT for the fleet side: :mod:`~fleet_cli.mqtt.connection` (one paho connection with manual
PUBACKs, reconnects and the MQTT 5 / 3.1.1 choice). It knows nothing of fleet homes: the settings
for a home's user come from :func:`fleet_cli.home.mqtt_settings`."""
