"""firmware_bridge: the serial link between an edge device and its sensor microcontroller.

Modules, one per concept (docs/firmware_bridge.md "The wire format" is the contract for the bytes):

* ``frames``: COBS + CRC-32 frames, the encoder and a streaming decoder with counters.
* ``hello`` / ``settings``: the HELLO description and the ``key=value;…`` text of HELLO and CONFIG.
* ``lines``: the text line protocol for quick sketches.
* ``samples``: ``Sample``, what the link hands to the agent.
* ``link``: ``SensorLink``, a reader that survives the port vanishing and coming back.
* ``simulator`` / ``faults`` / ``profiles``: a virtual microcontroller on a pseudo-terminal.
* ``cli``: the ``firmware-bridge`` command (``simulate``, ``monitor``).
* ``firmware/``: the reference C implementation for microcontrollers and an Arduino sketch.

Importing the package is cheap: pyserial, numpy and the simulator load only where they are used.
"""

from __future__ import annotations

_FALLBACK_VERSION = "0+unknown"


def version() -> str:
    """The installed distribution's version (``edgeseal``), read lazily."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("edgeseal")
    except PackageNotFoundError:
        return _FALLBACK_VERSION
