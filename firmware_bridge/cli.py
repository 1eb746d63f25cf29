"""``firmware-bridge``: a virtual microcontroller (``simulate``) and a frame monitor (``monitor``).

argparse, not typer: the command runs on small devices and must start fast; pyserial and the
simulator are imported only by the subcommand that needs them. Every ``BridgeError`` is caught once
in ``main`` and printed as ``error: …`` and ``hint: …`` (``-v`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType as StackFrame
from typing import TYPE_CHECKING, Any, TextIO

from firmware_bridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from firmware_bridge.frames import Frame
    from firmware_bridge.link import SensorLink
    from firmware_bridge.samples import Sample

log = logging.getLogger(__name__)

PROG = "firmware-bridge"
# How long one read waits before the monitor checks --timeout again (and how late Ctrl-C can feel).
MONITOR_POLL_S = 0.2
# Device text printed by the monitor is cut here: a full LOG frame payload fits.
MONITOR_TEXT_MAX = 1024
EXIT_OK = 0
EXIT_FAILED = 1


class _Version(argparse.Action):
    """``--version`` that reads the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from firmware_bridge import version

        print(f"{PROG} {version()}")
        parser.exit()


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _schedule(text: str) -> list[tuple[float, str]]:
    """``"0:normal,30:imbalance"`` → ``[(0.0, "normal"), (30.0, "imbalance")]``."""
    steps: list[tuple[float, str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        when, sep, name = item.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"schedule item {item!r} is not SECONDS:CONDITION")
        steps.append((_positive_float(when), name.strip()))
    return steps


def _channels(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Serial tools for edgeseal sensor microcontrollers (docs/firmware_bridge.md)."
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser(
        "simulate",
        help="run a virtual microcontroller on a pseudo-terminal",
        description="Run a virtual microcontroller on a pseudo-terminal. Prints the path to open on the "
        "first line of stdout, then runs until Ctrl-C (or --duration).",
    )
    sim.add_argument("--profile", default="vibration", help="vibration (3-axis, g) or environment")
    sim.add_argument("--hz", type=_positive_float, help="sample rate (vibration 50-1000, environment 0.1-10)")
    sim.add_argument("--protocol", choices=("frames", "lines"), default="frames")
    sim.add_argument("--link", type=Path, help="keep a symlink to the pty here (stable across unplugs)")
    sim.add_argument("--seed", type=int, help="seed for reproducible signals and faults")
    sim.add_argument("--condition", help="starting condition: normal, imbalance or bearing")
    sim.add_argument(
        "--schedule", type=_schedule, default=[], help="conditions over sample time, e.g. 0:normal,30:bearing"
    )
    sim.add_argument("--ber", type=_positive_float, default=0.0, help="bit error rate, e.g. 1e-4")
    sim.add_argument("--drop-rate", type=_positive_float, default=0.0, help="probability a byte is lost")
    sim.add_argument(
        "--garbage-every", type=_positive_float, default=0.0, metavar="S", help="noise burst period"
    )
    sim.add_argument(
        "--disconnect-every", type=_positive_float, default=0.0, metavar="S", help="unplug the port every S s"
    )
    sim.add_argument(
        "--disconnect-for", type=_positive_float, default=1.0, metavar="S", help="unplugged for S s"
    )
    sim.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    sim.add_argument(
        "--fast", action="store_true", help="not real time: samples as fast as the reader takes them"
    )

    mon = commands.add_parser(
        "monitor",
        help="print decoded frames from a serial port",
        description="Print decoded frames (or lines) from a serial port; on exit print the counters.",
    )
    mon.add_argument("port", help="device path (/dev/ttyUSB0) or pyserial URL")
    mon.add_argument("--baud", type=_count, default=115200)
    mon.add_argument("--count", type=_count, help="stop after N frames")
    mon.add_argument("--json", action="store_true", help="one JSON object per line")
    mon.add_argument("--protocol", choices=("frames", "lines"), default="frames")
    mon.add_argument("--channels", type=_channels, help="channel names, e.g. ax,ay,az (lines: bare CSV)")
    mon.add_argument("--timeout", type=_positive_float, metavar="S", help="stop after S seconds")
    mon.add_argument("--wait", action="store_true", help="wait for the port to appear instead of failing")

    fw = commands.add_parser(
        "firmware",
        help="copy the reference firmware (C library + Arduino sketch) into a folder",
        description="Copy the reference firmware into DIR/edgeseal_imu/, ready for the Arduino IDE or "
        "arduino-cli (the sketch folder must carry the sketch's name).",
    )
    fw.add_argument("dir", type=Path, help="where to create the edgeseal_imu sketch folder")
    fw.add_argument("--force", action="store_true", help="overwrite files that are already there")
    return parser


class _Stop(Exception):
    """Raised in the main thread by SIGTERM so that commands end as on Ctrl-C."""


def _on_sigterm(signum: int, frame: StackFrame | None) -> None:
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``firmware-bridge``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "firmware":
            return _firmware(args)
        return _monitor(args, sys.stdout)
    except BridgeError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- simulate ------------------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from firmware_bridge.sim.faults import FaultConfig
    from firmware_bridge.sim.simulator import Simulator

    schedule = list(args.schedule)
    if args.condition:
        schedule.insert(0, (0.0, args.condition))
    faults = FaultConfig(
        ber=args.ber,
        drop_rate=args.drop_rate,
        garbage_every_s=args.garbage_every,
        disconnect_every_s=args.disconnect_every,
        disconnect_for_s=args.disconnect_for,
    )
    sim = Simulator(
        profile=args.profile,
        hz=args.hz,
        protocol=args.protocol,
        link=args.link,
        seed=args.seed,
        faults=faults,
        schedule=schedule,
        realtime=not args.fast,
    )
    path = sim.start()
    started = time.monotonic()
    try:
        print(path, flush=True)
        hello = sim.hello
        print(
            f"simulating {args.profile} ({','.join(hello.channels)}) at {hello.hz:g} Hz, {args.protocol}; "
            "Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while sim.running:
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            time.sleep(0.1)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        sim.stop()
    error = sim.error
    counters = " ".join(f"{key}={value}" for key, value in sim.stats().items())
    print(f"counters: {counters}", file=sys.stderr, flush=True)
    if error is not None:
        raise BridgeError(f"the simulator stopped: {error}") from error
    return EXIT_OK


# -- firmware ------------------------------------------------------------------------------------------

SKETCH_NAME = "edgeseal_imu"
FIRMWARE_FILES = ("edgeseal_frame.c", "edgeseal_frame.h", f"{SKETCH_NAME}.ino")


def _firmware(args: argparse.Namespace) -> int:
    source = Path(__file__).resolve().parent / "firmware"
    target = args.dir / SKETCH_NAME
    clashes = [name for name in FIRMWARE_FILES if (target / name).exists()]
    if clashes and not args.force:
        raise BridgeError(f"{target / clashes[0]} already exists", hint="pass --force to overwrite it")
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in FIRMWARE_FILES:
            (target / name).write_bytes((source / name).read_bytes())
    except OSError as exc:
        raise BridgeError(f"cannot write the firmware to {target}: {exc.strerror or exc}") from exc
    print(target)
    print(
        f"open {target / (SKETCH_NAME + '.ino')} in the Arduino IDE, or: "
        f"arduino-cli compile --fqbn esp32:esp32:esp32 {target}",
        file=sys.stderr,
    )
    return EXIT_OK


# -- monitor -------------------------------------------------------------------------------------------


def _monitor(args: argparse.Namespace, out: TextIO) -> int:
    from firmware_bridge.link import SensorLink

    if args.channels is not None and not args.channels:
        raise ConfigError("--channels names no channel", hint="e.g. --channels ax,ay,az")
    link = SensorLink(args.port, args.baud, protocol=args.protocol, channels=args.channels)
    link.open(wait=args.wait)
    printed = 0
    started = time.monotonic()
    status = EXIT_OK
    try:
        while args.count is None or printed < args.count:
            if args.timeout is not None and time.monotonic() - started >= args.timeout:
                if args.count is not None:
                    status = EXIT_FAILED
                break
            poll = MONITOR_POLL_S
            if args.timeout is not None:
                poll = max(0.0, min(poll, args.timeout - (time.monotonic() - started)))
            for record in _records(link, poll):
                if args.count is not None and printed >= args.count:
                    break
                _emit(out, record, as_json=args.json)
                printed += 1
    except (KeyboardInterrupt, _Stop):
        pass
    except BrokenPipeError:
        link.close()
        return EXIT_OK
    finally:
        link.close()
    counters = link.stats()
    _emit(out, {"type": "STATS", **counters}, as_json=args.json)
    if status != EXIT_OK:
        print(
            f"error: {printed} of {args.count} frames within {args.timeout:g} s",
            file=sys.stderr,
        )
        print("hint: is the device sending? compare --baud and --protocol with the firmware", file=sys.stderr)
    return status


def _records(link: SensorLink, timeout_s: float) -> list[dict[str, Any]]:
    if link.protocol == "lines":
        return [_sample_record(None, sample) for sample in link.read_samples(timeout_s)]
    return [_frame_record(link, frame) for frame in link.read_frames(timeout_s)]


def _frame_record(link: SensorLink, frame: Frame) -> dict[str, Any]:
    from firmware_bridge.errors import FrameError
    from firmware_bridge.frames import FrameType, decode_error, decode_sample, sample_channels
    from firmware_bridge.hello import parse_hello
    from firmware_bridge.samples import Sample

    record: dict[str, Any] = {"type": frame.type_name, "seq": frame.seq}
    try:
        if frame.type == FrameType.SAMPLE:
            channels = link.channels
            n = len(channels) if channels else sample_channels(frame.payload)
            t_us, values = decode_sample(frame.payload, n)
            return _sample_record(frame.seq, Sample(t_us, values, frame.payload))
        if frame.type == FrameType.HELLO:
            hello = parse_hello(frame.payload)
            record.update(fw=hello.firmware, ver=hello.version, ch=list(hello.channels), hz=hello.hz)
            record.update(hello.extra)
        elif frame.type == FrameType.LOG:
            record["text"] = frame.payload.decode("utf-8", errors="replace")
        elif frame.type == FrameType.ERROR:
            code, text = decode_error(frame.payload)
            record.update(code=code, text=text)
        else:
            record["payload"] = frame.payload.hex()
    except FrameError as exc:
        record.update(error=str(exc), payload=frame.payload.hex())
    return record


def _sample_record(seq: int | None, sample: Sample) -> dict[str, Any]:
    values = [value if math.isfinite(value) else None for value in sample.values]
    return {"type": "SAMPLE", "seq": seq, "t_us": sample.t_us, "values": values}


def _emit(out: TextIO, record: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(record, allow_nan=False, ensure_ascii=True) + "\n")
    else:
        out.write(_human(record) + "\n")
    out.flush()


def _human(record: dict[str, Any]) -> str:
    from firmware_bridge.sanitize import printable

    kind = record["type"]
    if kind == "STATS":
        return "counters: " + " ".join(f"{key}={value}" for key, value in record.items() if key != "type")
    head = kind if record.get("seq") is None else f"{kind} seq={record['seq']}"
    parts = []
    for key, value in record.items():
        if key in ("type", "seq"):
            continue
        text = _list_text(value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={printable(text, MONITOR_TEXT_MAX)}")
    return " ".join([head, *parts])


def _list_text(values: list[Any]) -> str:
    return ",".join("nan" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in values)
