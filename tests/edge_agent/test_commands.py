from __future__ import annotations

import time
from pathlib import Path

from edge_agent.commands import (
    CLOCK_SKEW_MS,
    MAX_COMMAND_TTL_S,
    REFUSAL_REPLY_BURST,
    REFUSAL_REPLY_EVERY_S,
    Checked,
    Refusal,
    ReplyBudget,
    admit_command,
    check_command,
)
from edge_agent.outbox import MAX_REPLAY_IDS, Outbox
from edge_protocol.keys import Signer, Verifier
from tests.edge_agent._support import DEV, FLEET, OPERATOR, ack_cose, command_cose

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


# -- the replay cache: a command runs at most once, whatever the clock does (docs/agent.md "Commands")


def open_cache(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)


def admit(box: Outbox, cose: bytes, now_ms: int) -> Checked:
    return admit_command(cose, FLEET, DEV, OP, cache=box, now_ms=now_ms)


def test_replays_in_the_skew_window_after_exp_run_once(tmp_path: Path) -> None:
    box = open_cache(tmp_path)
    t = now()
    exp = t + 1_000
    cose = command_cose("ping", b"r" * 16, exp_ms=exp)
    assert admit(box, cose, t).command is not None
    # after exp, still acceptable for CLOCK_SKEW_MS: every replay is refused, no reply
    for late in (1, 1_000, 2_500, CLOCK_SKEW_MS - 1, CLOCK_SKEW_MS):
        c = admit(box, cose, exp + late)
        assert (c.command, c.refusal) == (None, Refusal.REPLAYED), late
        assert not c.refusal.replies
        # the cache is not refusing everything: a fresh command at the same moment runs
        assert admit(
            box, command_cose("ping", late.to_bytes(16, "big"), exp_ms=exp + 60_000), exp + late
        ).command
    assert admit(box, cose, exp + CLOCK_SKEW_MS + 1).refusal is Refusal.EXPIRED


def prune(box: Outbox, cid: bytes, now_ms: int) -> None:
    """Another command, admitted at ``now_ms``, prunes every id its reading refuses as expired."""
    assert admit(box, command_cose("ping", cid, exp_ms=now_ms + 60_000), now_ms).command is not None


def test_a_pruned_command_stays_refused_when_the_clock_is_set_back(tmp_path: Path) -> None:
    box = open_cache(tmp_path)
    t = now()
    exp = t + 1_000
    cose = command_cose("ping", b"r" * 16, exp_ms=exp)
    assert admit(box, cose, t).command is not None
    prune(box, b"p" * 16, exp + CLOCK_SKEW_MS + 1)
    with box._lock:
        assert box._db.execute("SELECT 1 FROM commands WHERE id = ?", (b"r" * 16,)).fetchone() is None
    # the device's clock is set back: exp lies in the future again
    for back in (t - 3_600_000, t, exp, exp + CLOCK_SKEW_MS):
        c = admit(box, cose, back)
        assert (c.command, c.refusal) == (None, Refusal.REPLAYED), back - exp
    assert admit(box, command_cose("ping", b"n" * 16, exp_ms=exp + 1), t).command is not None  # newer: runs


def test_a_command_stays_refused_after_a_restart(tmp_path: Path) -> None:
    box = open_cache(tmp_path)
    t = now()
    exp = t + 1_000
    kept = command_cose("ping", b"k" * 16, exp_ms=exp + 10 * CLOCK_SKEW_MS)
    pruned = command_cose("ping", b"r" * 16, exp_ms=exp)
    assert admit(box, kept, t).command is not None
    assert admit(box, pruned, t).command is not None
    prune(box, b"p" * 16, exp + CLOCK_SKEW_MS + 1)
    box.close()
    box = open_cache(tmp_path)  # the agent restarted: the same outbox database
    for at in (t, exp, exp + CLOCK_SKEW_MS):
        for cose in (kept, pruned):
            c = admit(box, cose, at)
            assert (c.command, c.refusal) == (None, Refusal.REPLAYED), at - exp
    box.close()


def test_a_full_cache_refuses_with_a_reply(tmp_path: Path) -> None:
    box = open_cache(tmp_path)
    t = now()
    with box._lock:
        box._db.executemany(
            "INSERT INTO commands (id, exp) VALUES (?, ?)",
            [(i.to_bytes(16, "big"), t + 60_000) for i in range(MAX_REPLAY_IDS)],
        )
    c = admit(box, command_cose("ping", b"z" * 16), t)
    assert (c.command, c.refusal, c.command_id) == (None, Refusal.CACHE_FULL, b"z" * 16)
    assert c.refusal.replies


def test_refusal_replies_are_rate_limited() -> None:
    """Replayed expired commands must not fill the device's outbox with signed replies: a burst of
    REFUSAL_REPLY_BURST, then one every REFUSAL_REPLY_EVERY_S."""
    t = [0.0]
    budget = ReplyBudget(clock=lambda: t[0])
    assert [budget.take() for _ in range(REFUSAL_REPLY_BURST + 5)] == [True] * REFUSAL_REPLY_BURST + [
        False
    ] * 5
    t[0] += REFUSAL_REPLY_EVERY_S
    assert [budget.take(), budget.take()] == [True, False]
    t[0] += 1e9  # refills up to the burst, not beyond
    assert sum(budget.take() for _ in range(3 * REFUSAL_REPLY_BURST)) == REFUSAL_REPLY_BURST
    t[0] -= 1e6  # a clock that goes back adds nothing
    assert not budget.take()
