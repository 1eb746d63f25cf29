"""What edgeseal's two MQTT clients (the agent, the fleet CLI) agree on about MQTT itself.

Both speak MQTT 5 when the broker does and fall back to 3.1.1 when it refuses the version; the refusal
is a CONNACK code, and the codes that mean it are listed here once.
"""

from __future__ import annotations

# CONNACK codes for "this broker does not speak the protocol version you asked for": MQTT 3.1.1
# return code 1 "unacceptable protocol version" (MQTT 3.1.1 §3.2.2.3, which a 3.1.1-only broker
# answers an MQTT 5 CONNECT with) and MQTT 5 reason code 0x84 "unsupported protocol version"
# (MQTT 5 §3.2.2.2). Any other refusal (credentials, ACL, quota) would fail on 3.1.1 too.
UNSUPPORTED_PROTOCOL_VERSION = frozenset({0x01, 0x84})
