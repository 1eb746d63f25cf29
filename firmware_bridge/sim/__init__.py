"""A virtual microcontroller on a pseudo-terminal, for demos and tests (docs/firmware_bridge.md).

* ``simulator``: ``Simulator``, a pty that speaks the frame or line protocol like real firmware.
* ``faults``: what the simulator can do wrong on purpose (bit errors, garbage, unplugging).
* ``profiles``: the synthetic sensor signals (the vibration generator the shipped model learnt from).

Nothing on a device imports this package; the agent reads real serial ports through ``link``.
"""
