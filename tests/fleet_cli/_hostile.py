"""Test support for the terminal-safety tests: device text that is rich markup, escape sequences,
bidi overrides and NUL, stored through a real collector, and the checks every command's output must pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_protocol.topics import Channel, device_topic
from fleet_cli.registry import Registry
from tests.fleet_cli._collect_sim import (
    Populated,
    Publisher,
    add_devices,
    collector_config,
    running,
    unique_fleet,
)

TITLE = "\x1b]0;pwned\x07"  # sets the terminal window title
CLEAR = "\x1b[2J"  # clears the screen
RED = "\x1b[31m"  # recolours what follows
BIDI = "\u202eevil\u202c\u2066x\u2069"  # right-to-left override, isolates
NUL = "n\x00l"

# What each device says, and how it must look on a terminal.
AGENT = "[/]" + TITLE
LABELS = ("[/x]", CLEAR + "cleared", RED + "red", BIDI, NUL)
METRIC = TITLE + "cpu"
SHOWN = {
    "[/]\\x1b]0;pwned\\x07",
    "[/x]",
    "\\x1b[2Jcleared",
    "\\x1b[31mred",
    "\\u202eevil\\u202c\\u2066x\\u2069",
    "n\\x00l",
}
# Characters that must never reach the terminal raw.
RAW = ("\x1b", "\x07", "\x00", "\u202e", "\u202c", "\u2066", "\u2069")


def hostile_home(tmp: Path, broker_host: str, broker_port: int) -> Populated:
    """A fleet home whose store holds one device's birth (agent ``[/]`` plus a title sequence), results
    labelled with every string of :data:`LABELS` and a heartbeat with a hostile metric name."""
    from fleet_cli.collector.store import default_store_path
    from fleet_cli.home import init_fleet

    fleet = unique_fleet("x")
    home = init_fleet(tmp / "home", fleet)
    store = default_store_path(home.root)
    with Registry(home.registry_db) as reg:
        devs = add_devices(reg, fleet, ["dev-01"])
        d = devs["dev-01"]
        pub = Publisher(broker_host, broker_port)
        try:
            with running(collector_config(fleet, broker_host, broker_port, store), reg) as c:
                pub.send(
                    d.birth(info={"agent": AGENT}),
                    *(d.result(label=label, score=0.5) for label in LABELS),
                    d.heartbeat(**{METRIC: 0.5}),
                    (device_topic(fleet, "dev-01", Channel.STATE), b'{"state":"online","boot":1,"t":1}'),
                )
                assert c.wait_idle()
        finally:
            pub.close()
    return Populated(home, devs, store)


def assert_terminal_safe(text: str, shown: set[str] | frozenset[str] = frozenset()) -> None:
    """No raw control, escape or bidi character in ``text`` (line ends aside); each of ``shown`` visible."""
    for ch in RAW:
        assert ch not in text, f"{ch!r} reached the terminal raw"
    lines = text.replace("\r\n", "\n").split("\n")  # CSV ends its lines with CR LF
    assert all(line.isprintable() for line in lines), [c for c in text if not c.isprintable()]
    for s in shown:
        assert s in text, f"{s!r} not shown"


def as_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make standard output look like a terminal to the commands, so that they draw rich tables as
    they do for an operator, while rich itself writes no escape sequences (``TTY_COMPATIBLE=0``) on
    400 columns: any ESC in the output can only be the device's, and no cell is wrapped."""
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
