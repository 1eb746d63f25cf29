from __future__ import annotations

import time

from edge_agent.commands import MAX_COMMAND_TTL_S, Refusal, check_command
from edge_protocol.keys import Signer, Verifier
from tests.edge_agent.helpers import DEV, FLEET, OPERATOR, ack_cose, command_cose

OP = Verifier(OPERATOR.public_key)


def now() -> int:
    return int(time.time() * 1000)


def test_good_command() -> None:
    c = check_command(command_cose("pause", b"1" * 16, args={"pipe": "vib"}), FLEET, DEV, OP, now())
    assert c.command is not None
    assert c.command.name == "pause"
    assert c.command.args == {"pipe": "vib"}


def test_refusals() -> None:
    t = now()
    other = Signer.from_seed(b"\x07" * 32)
    cases = [
        (command_cose("ping", b"1" * 16, signer=other), Refusal.BAD_ENVELOPE),
        (command_cose("ping", b"1" * 16)[:-1] + b"\0", Refusal.BAD_ENVELOPE),
        (ack_cose(1, 1, signer=OPERATOR), Refusal.NOT_COMMAND),
        (command_cose("ping", b"1" * 16, dev="dev-02"), Refusal.OTHER_DEVICE),
        (command_cose("ping", b"1" * 16, exp_ms=t - 60_000), Refusal.EXPIRED),
        (command_cose("ping", b"1" * 16, exp_ms=t + (MAX_COMMAND_TTL_S + 60) * 1000), Refusal.TOO_FAR),
    ]
    for cose, refusal in cases:
        c = check_command(cose, FLEET, DEV, OP, t)
        assert c.command is None, refusal
        assert c.refusal is refusal, (refusal, c)
    assert (
        check_command(command_cose("ping", b"1" * 16), "other-fleet", DEV, OP, t).refusal
        is Refusal.BAD_ENVELOPE
    )
    assert Refusal.EXPIRED.replies
    assert not Refusal.BAD_ENVELOPE.replies
