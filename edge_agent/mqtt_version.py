"""Which MQTT version the agent's next CONNECT speaks when ``mqtt.protocol = "auto"``.

MQTT 5 is preferred (docs/protocol.md §5; docs/agent.md "MQTT version"); 3.1.1 is for brokers that do
not speak it. The evidence differs in quality, and a flaky network must not pin a fleet to 3.1.1:

* **Refused**: a CONNACK "unsupported protocol version" (MQTT 3.1.1 §3.2.2.3 requires a 3.1.1-only
  broker to send it). Proof: 3.1.1 from now on.
* **Timed out**: the TCP connection stood but no CONNACK came within ``connect_timeout_s`` (some
  3.1.1-only brokers, amqtt among them, never answer an MQTT 5 CONNECT). The next attempt *probes*
  3.1.1 at once; if the broker answers it, 3.1.1 is kept (each retry would cost another timeout).
* **Closed**: the broker closed the connection before any CONNACK. A broker restarting or a network
  reset looks exactly like this, so one close is an ordinary failure (back off, retry MQTT 5); only
  :data:`CLOSES_BEFORE_PROBE` in a row lead to a 3.1.1 probe. A probe that succeeds this way holds for
  that connection only, until it happens again (then 3.1.1 is kept): an outage that ends on a probe
  costs one 3.1.1 connection, not a pinned fleet.
* **Unreachable** (TCP refused, DNS, TLS): says nothing about the protocol; a probe in progress is
  abandoned and the next attempt speaks MQTT 5 again.

A probe that fails without a CONNACK means the broker was down, not deaf to MQTT 5: back to MQTT 5.
Kept 3.1.1 is tried against MQTT 5 again at the first reconnect after :data:`REPROBE_S` (the broker
may have been upgraded); an agent restart tries MQTT 5 at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from edge_agent.config import MqttVersion

CLOSES_BEFORE_PROBE = 2
REPROBE_S = 3600.0
# Succeeded close-probes before 3.1.1 is kept (not re-probed at every reconnect).
CLOSE_PROBES_TO_KEEP = 2


class Cause(str, enum.Enum):
    TIMED_OUT = "timed out"
    CLOSED = "closed"


class VersionPolicy:
    """The state machine above. Methods return True when the next attempt should start at once."""

    def __init__(self, mode: MqttVersion, clock: Callable[[], float]) -> None:
        self.mode = mode
        self._clock = clock
        self.use_v5 = mode is not MqttVersion.V311
        self.fallbacks = 0  # attempts switched to 3.1.1
        self._closes = 0  # MQTT 5 attempts closed before CONNACK, in a row
        self._probe: Cause | None = None  # this 3.1.1 attempt is a probe, and why
        self._close_probes_ok = 0
        self._kept_since: float | None = None  # 3.1.1 kept (proved or earned) since then

    @property
    def auto(self) -> bool:
        return self.mode is MqttVersion.AUTO

    @property
    def kept(self) -> bool:
        return self._kept_since is not None

    def refused(self) -> bool:
        """CONNACK "unsupported protocol version": on MQTT 5 in auto mode, switch to 3.1.1 for good."""
        if not (self.auto and self.use_v5):
            return False
        self._switch(None)
        self._kept_since = self._clock()
        return True

    def no_connack(self, cause: Cause) -> bool:
        """The attempt ended without a CONNACK; True: probe 3.1.1 right away."""
        if not self.auto:
            return False
        if not self.use_v5:
            if self._probe is not None or not self.kept:  # the broker was down, not deaf to MQTT 5
                self._probe = None
                self.use_v5 = True
            return False
        if cause is Cause.CLOSED:
            self._closes += 1
            if self._closes < CLOSES_BEFORE_PROBE:
                return False
        self._switch(cause)
        return True

    def unreachable(self) -> None:
        """TCP/TLS connect failed: no evidence about the protocol; a probe in progress is abandoned."""
        self._closes = 0
        if self.auto and self._probe is not None:
            self._probe = None
            self.use_v5 = True

    def answered(self) -> None:
        """A CONNACK arrived (accepted or refused for another reason): this version is spoken."""
        self._closes = 0
        cause, self._probe = self._probe, None
        if cause is Cause.TIMED_OUT:
            self._kept_since = self._clock()
        elif cause is Cause.CLOSED:
            self._close_probes_ok += 1
            if self._close_probes_ok >= CLOSE_PROBES_TO_KEEP:
                self._kept_since = self._clock()

    def disconnected(self) -> None:
        """An established connection ended: choose the version of the reconnect."""
        if not self.auto or self.use_v5:
            return
        if self._kept_since is None or self._clock() - self._kept_since >= REPROBE_S:
            self._kept_since = None
            self.use_v5 = True

    def _switch(self, cause: Cause | None) -> None:
        self.use_v5 = False
        self._closes = 0
        self._probe = cause
        self.fallbacks += 1
