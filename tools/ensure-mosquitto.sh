#!/bin/sh
# Make sure a Mosquitto broker binary is available (the tests start their own private instances).
set -eu
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto not found: installing it with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    # Debian enables and starts the system service on install; the tests never use it.
    exit 0
fi
echo "error: mosquitto is not installed. Install it (Debian/Ubuntu: sudo apt-get install mosquitto mosquitto-clients)" >&2
echo "       and run this command again." >&2
exit 1
