"""The command vocabulary (edge_protocol.commands): one list for `fleet cmd` and the agent."""

from __future__ import annotations

from edge_protocol.commands import ARGUMENTS, PIPE_ARG, CommandName, describe


def test_vocabulary() -> None:
    assert [c.value for c in CommandName] == ["ping", "status", "reload", "pause", "resume"]
    assert set(ARGUMENTS) == set(CommandName)
    assert {c for c, args in ARGUMENTS.items() if args} == {CommandName.PAUSE, CommandName.RESUME}
    assert ARGUMENTS[CommandName.PAUSE] == (PIPE_ARG,) == ("pipe",)
    assert describe() == "ping, status, reload, pause (pipe=…), resume (pipe=…)"


def test_fleet_cmd_and_the_agent_use_it() -> None:
    from edge_agent.commands import BUILTINS
    from fleet_cli.commands import cmd as cmd_cmd

    assert tuple(c.value for c in CommandName) == BUILTINS  # the agent's "unknown command" reply lists these
    assert cmd_cmd.CommandName is CommandName  # the names `fleet cmd` accepts
