#!/bin/sh
# Make sure an OpenSSH server and client are available: the `fleet flash --ssh` tests start their own
# private sshd on a free loopback port (the system service is never used or enabled by them).
set -eu
have_sshd() {
    command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]
}
if have_sshd && command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "sshd/ssh not found: installing openssh-server and openssh-client with apt-get" >&2
    apt-get update -qq
    # Where systemd runs, Debian enables and starts the system sshd on install; the tests never use it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
    exit 0
fi
echo "error: OpenSSH server/client not installed; the SSH install tests will be skipped." >&2
echo "       Install them (Debian/Ubuntu: sudo apt-get install openssh-server openssh-client)" >&2
echo "       and run this command again." >&2
exit 1
