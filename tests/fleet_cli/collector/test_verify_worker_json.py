"""The verify worker's JSON of payload maps is exactly ``json.dumps(to_json(value))`` (what the store and
the verified republish have always held), also for the values the fast path hands back to to_json."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from edge_protocol.payload import to_json
from fleet_cli.collector.verify_worker import _json

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=12), _values, max_size=8))
def test_same_text_as_to_json(value: dict[str, Any]) -> None:
    assert _json(value) == json.dumps(to_json(value), separators=(",", ":"))


def test_a_typical_result_and_a_reply() -> None:
    out = {"label": "imbalance", "score": 0.9375, "values": [0.03125, 0.9375, 0.03125], "raw": b"\x01\xff"}
    assert _json(out) == '{"label":"imbalance","score":0.9375,"values":[0.03125,0.9375,0.03125],"raw":"01ff"}'
    reply = {"id": b"\x00" * 2, "reply": {"ok": True, "pipes": {"vib": {"paused": False}}}}
    assert _json(reply) == '{"id":"0000","reply":{"ok":true,"pipes":{"vib":{"paused":false}}}}'
