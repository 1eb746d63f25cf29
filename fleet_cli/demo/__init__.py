"""``fleet demo``: a whole verifiable fleet on this machine (docs/collector.md "The demo").

* ``run``: :class:`~fleet_cli.demo.run.Demo` — the broker (Mosquitto, or the embedded amqtt one),
  virtual microcontrollers, real agents, the collector, the attack;
* ``view``: what the live table shows, read from the collector and its store;
* ``embedded_broker``: amqtt in process, for machines without Mosquitto.

The command and its printing are :mod:`fleet_cli.commands.demo`.
"""
