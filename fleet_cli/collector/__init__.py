"""The collector: receive device messages over MQTT, verify, store, acknowledge (docs/collector.md).

* ``config``: :class:`~fleet_cli.collector.config.CollectorConfig` and the limits;
* ``intake``: the verification of one message (registry look-ups, signature, chain), no I/O of its own;
* ``verify_worker``: signature checks in worker processes;
* ``service``: :class:`~fleet_cli.collector.service.Collector`, the threads, batches, acks;
* ``store``: the SQLite store; ``stats`` and ``metrics``: what it counts; ``aggregate``: fleet views.

The package itself imports nothing, so that reading the store (``fleet export``, ``fleet status``)
does not load paho or the verifier.
"""
