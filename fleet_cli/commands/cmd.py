"""``fleet cmd DEVICE NAME [k=v ...]``: send a signed command (kind 6, operator key) and print the
device's signed reply (kind 4, verified with the device's bound key; docs/protocol.md §4, §5).

The command carries a random 16-byte id and an absolute expiry (``exp``, ms since the epoch) of
now + ``--wait``: a device refuses it afterwards, and ids it has seen (replay cache). Exit 0 when the
reply says ``ok``, 1 on a refusal or when no valid reply arrives in time.
"""

from __future__ import annotations

import json
import math
import queue
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from edge_protocol.commands import CommandName, describe
from edge_protocol.envelope import EnvelopeError, Opened, open_envelope, seal
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.keys import Signer, read_private_key
from edge_protocol.payload import INT_MAX, MAX_TEXT_KEY_BYTES, Key, Kind, to_json
from edge_protocol.topics import Channel, device_topic
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import FleetHome, mqtt_settings
from fleet_cli.mqtt.connection import Connection
from fleet_cli.mqtt.settings import MqttSettings, MqttVersion, Received
from fleet_cli.options import HomeOption
from fleet_cli.registry import Registry

COMMAND_ID_LEN = 16  # docs/protocol.md §3 key 20: bstr16
# Default time to wait for the reply; also the command's expiry.
DEFAULT_WAIT_S = 10.0
# More argument pairs than this is a typo, not a command.
MAX_ARGS = 32
# An argument quoted in an error message is cut to this many characters.
SHOWN_ARG_CHARS = 40
_INT = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_NON_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity)", re.IGNORECASE)


def parse_args(pairs: list[str]) -> dict[str, Any]:
    """``["rate=5", "pipe=vib", "dry=true"]`` -> ``{"rate": 5, "pipe": "vib", "dry": True}``.

    A value is ``true``/``false``, an integer (ASCII digits) within the protocol's integer range, a
    finite decimal number, or else text. Anything a payload cannot carry is a UsageError here, before
    the fleet home is read: NaN and infinities, integers beyond ±(2^53-1), text that is not UTF-8 (a
    shell passes bytes), keys longer than 63 bytes.
    """
    if len(pairs) > MAX_ARGS:
        raise UsageError(f"at most {MAX_ARGS} arguments")
    out: dict[str, Any] = {}
    for pair in pairs:
        shown = _shown(pair)
        try:
            pair.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"argument {shown} is not UTF-8 text", hint="check the shell's locale") from None
        k, sep, v = pair.partition("=")
        if not sep or not k or len(k.encode("utf-8")) > MAX_TEXT_KEY_BYTES:
            raise UsageError(f"argument {shown} is not KEY=VALUE (key at most {MAX_TEXT_KEY_BYTES} bytes)")
        out[k] = _arg_value(k, v)
    return out


def _shown(text: str) -> str:
    """An argument as an error message shows it: escaped (repr), and cut short."""
    return repr(text if len(text) <= SHOWN_ARG_CHARS else text[:SHOWN_ARG_CHARS] + "…")


def _arg_value(key: str, v: str) -> Any:
    if v in ("true", "false"):
        return v == "true"
    if _INT.fullmatch(v):
        # docs/protocol.md §3 "Integers"; int() of thousands of digits is slow or refused
        # (sys.int_info), so the digits are counted first
        n = int(v) if len(v.lstrip("+-").lstrip("0")) <= len(str(INT_MAX)) else INT_MAX + 1
        if not -INT_MAX <= n <= INT_MAX:
            raise UsageError(
                f"argument {_shown(key)}: {_shown(v)} is outside the protocol's integer range ±(2^53-1)",
                hint="a larger number goes as a decimal (1e20) or as text",
            )
        return n
    if _NON_FINITE.fullmatch(v):
        raise UsageError(
            f"argument {_shown(key)}: NaN and infinities cannot be sent",
            hint="a payload's numbers are finite",
        )
    if _DECIMAL.fullmatch(v):
        x = float(v)
        if not math.isfinite(x):
            raise UsageError(f"argument {_shown(key)}: {_shown(v)} is too large for a 64-bit float")
        return x
    return v


@dataclass(frozen=True)
class Reply:
    dev: str
    ok: bool
    reply: dict[str, Any]
    msg_id: str
    boot: int | None
    seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {"dev": self.dev, "ok": self.ok, "reply": to_json(self.reply), "msg_id": self.msg_id,
                "boot": self.boot, "seq": self.seq}  # fmt: skip


def send_command(
    settings: MqttSettings,
    fleet: str,
    dev: str,
    name: str,
    args: dict[str, Any],
    *,
    operator: Signer,
    device_key: bytes,
    wait_s: float = DEFAULT_WAIT_S,
) -> Reply:
    """Publish the sealed command and wait for the matching, verified reply (raises FleetError)."""
    cmd_id = secrets.token_bytes(COMMAND_ID_LEN)
    now_ms = time.time_ns() // 1_000_000
    payload: dict[int, Any] = {
        Key.V: 1,
        Key.DEV: dev,
        Key.T: now_ms,
        Key.KIND: int(Kind.COMMAND),
        Key.CMD: name,
        Key.ARGS: args,
        Key.ID: cmd_id,
        Key.EXP: now_ms + int(wait_s * 1000),
    }
    try:
        sealed = seal(payload, operator, fleet)
    except EnvelopeError as e:  # parse_args leaves only the arguments' total size to fail here
        raise UsageError(f"command {name!r} cannot be sent: {e}", hint="shorten its arguments") from None
    q: queue.Queue[Received] = queue.Queue()
    link = Connection(
        settings, subscriptions=[device_topic(fleet, dev, Channel.REPLY)], on_message=q.put
    ).connect()
    try:
        link.publish_wait(device_topic(fleet, dev, Channel.CMD), sealed.cose, qos=1)
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = q.get(timeout=left)
            except queue.Empty:
                break
            try:
                opened: Opened = open_envelope(m.payload, fleet, device_key)
            except EnvelopeError:
                continue  # not from the device: ignore, keep waiting
            p = opened.payload
            if opened.kind is not Kind.REPLY or p.get(Key.ID) != cmd_id or opened.dev != dev:
                continue
            body = p[Key.REPLY]
            return Reply(
                dev, body.get("ok") is True, dict(body), opened.msg_id.hex(), opened.boot, opened.seq
            )
    finally:
        link.close()
    raise FleetError(
        f"no signed reply from {dev} to {name!r} within {wait_s:g} s",
        hint="is the device online? (`fleet status`); try a longer --wait",
    )


def cmd(
    device: Annotated[str, typer.Argument(help="Device id.")],
    name: Annotated[CommandName, typer.Argument(help=f"Command: {describe()}.")],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments KEY=VALUE.")] = None,
    *,
    home: HomeOption = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the reply.")] = DEFAULT_WAIT_S,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
    user: Annotated[str | None, typer.Option("--user", help="Broker user (role operator).")] = None,
    password: Annotated[str | None, typer.Option("--password", envvar="EDGESEAL_MQTT_PASSWORD")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Broker host.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Broker port.")] = None,
    protocol: Annotated[MqttVersion, typer.Option("--protocol", help="MQTT version.")] = MqttVersion.AUTO,
) -> None:
    """Send a signed command to a device and print its signed reply (exit 1 on refusal or timeout)."""
    try:
        validate_id(device, "device id")
    except InvalidId as e:
        raise UsageError(str(e), hint=e.hint) from None
    if not 0 < wait <= 3600:
        raise UsageError("--wait is between 0 and 3600 seconds")
    arg_map = parse_args(args or [])
    fleet_home = FleetHome.load(home)
    with Registry(fleet_home.registry_db) as reg:
        key = reg.device_key(device)
        if key is None:
            reg.get_device(device)  # NotFoundError names the problem
            raise FleetError(f"device {device} has no key bound yet", hint="it enrols with its first birth")
    operator = read_private_key(fleet_home.operator_key)
    settings = mqtt_settings(
        fleet_home, user or fleet_home.config.operator_user, host=host, port=port, password=password,
        protocol=protocol,
    )  # fmt: skip
    reply = send_command(
        settings,
        fleet_home.fleet,
        device,
        name.value,
        arg_map,
        operator=operator,
        device_key=key,
        wait_s=wait,
    )
    if as_json:
        typer.echo(json.dumps(reply.to_json()))
    else:
        typer.echo(f"{device}: {'ok' if reply.ok else 'refused'}  {json.dumps(to_json(reply.reply))}")
    if not reply.ok:
        raise typer.Exit(1)
