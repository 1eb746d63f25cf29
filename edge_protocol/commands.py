"""The operator's command vocabulary (docs/agent.md "Commands"): what ``fleet cmd`` may send and a
device runs, and the arguments each command reads.

A command travels as a COMMAND payload (docs/protocol.md §3 keys 18, 19): its name in ``cmd`` and its
arguments in ``args``, a map of text keys. A device answers a name it does not know with a signed
``unknown command`` reply listing these names; it ignores arguments a command does not read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class CommandName(str, enum.Enum):
    PING = "ping"  # {ok, pong: t_ms}
    STATUS = "status"  # the agent's status
    RELOAD = "reload"  # re-read the config file, rebuild the pipelines
    PAUSE = "pause"  # stop making results (one pipeline, or all)
    RESUME = "resume"  # make results again

    def __str__(self) -> str:
        return self.value


# The argument of pause and resume naming one pipeline; all pipelines when it is absent.
PIPE_ARG = "pipe"

# The arguments each command reads (every one optional).
ARGUMENTS: Mapping[CommandName, tuple[str, ...]] = MappingProxyType(
    {
        CommandName.PING: (),
        CommandName.STATUS: (),
        CommandName.RELOAD: (),
        CommandName.PAUSE: (PIPE_ARG,),
        CommandName.RESUME: (PIPE_ARG,),
    }
)


def describe() -> str:
    """The vocabulary in one line, for a CLI's help: ``ping, status, …, pause (pipe=…)``."""
    return ", ".join(name.value + "".join(f" ({arg}=…)" for arg in ARGUMENTS[name]) for name in CommandName)
