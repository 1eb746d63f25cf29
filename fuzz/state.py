"""Fuzz target: the advisory ``state`` JSON (:func:`edge_protocol.state.parse_state`, docs/protocol.md §5).

The input is what anyone with write access to ``P/{dev}/state`` may publish, retained: any bytes.
Only :class:`StateError` is documented. Property: a state that parses with ``boot`` and ``t`` is
written back by :func:`encode_state` to a message that parses to the same state.
"""

from __future__ import annotations

from edge_protocol.state import StateError, encode_state, parse_state


def one_input(data: bytes) -> None:
    try:
        state = parse_state(data)
    except StateError:
        return
    if state.boot is not None and state.t is not None:
        assert parse_state(encode_state(state.presence, state.boot, state.t)) == state
