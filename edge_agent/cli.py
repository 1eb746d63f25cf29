"""``edge-agent``: run the agent, check a configuration, show the version.

argparse only (no typer/rich on the device: docs/design-notes.md), and nothing heavy imported before a command
needs it, so ``edge-agent --version`` starts in well under a second. Errors of the agent's own
(:class:`~edge_agent.errors.AgentError`) are printed as ``error: …`` and ``hint: …`` and exit 1;
``-v`` shows debug logs and tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent import __version__

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="edgeseal device agent: serial sensors → TFLite → signed results over MQTT",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", "-c", type=Path, required=True, help="the agent's TOML config file")
    check = sub.add_parser("check", help="validate the config and load every model")
    check.add_argument("--config", "-c", type=Path, required=True, help="the agent's TOML config file")
    return parser


def check_config(path: Path, out: list[str]) -> None:
    """Validate the config, every model, and the files it names; raise AgentError on the first problem."""
    from edge_agent.config import load_config
    from edge_agent.identity import read_claim_token
    from edge_agent.pipeline import build_engine, config_hash
    from edge_agent.session import _read_password, tls_context

    cfg = load_config(path)
    out.append(
        f"config {path}: device {cfg.device.id} in fleet {cfg.device.fleet}, state in {cfg.device.state_dir}"
    )
    out.append(
        f"mqtt {cfg.mqtt.host}:{cfg.mqtt.port} protocol {cfg.mqtt.protocol.value} "
        f"tls {'on' if cfg.mqtt.tls else 'off'}, delivery {cfg.trust.delivery.value}"
    )
    tls_context(cfg.mqtt)
    _read_password(cfg.mqtt)
    token = read_claim_token(cfg.claim_token_file)
    if cfg.claim_token_file is not None:
        out.append(f"claim token {'present' if token else 'absent (already enrolled?)'}")
    if not cfg.pipelines:
        out.append("warning: no [[pipeline]]: the agent will only send births and heartbeats")
    for p in cfg.pipelines:
        engine = build_engine(p)
        runtime = getattr(engine, "runtime", None)
        out.append(
            f"pipeline {p.name}: {p.model} ({runtime.name + ' ' + runtime.version if runtime else ''})"
        )
        out.append(f"  model blake3 {engine.model_hash.hex()}")
        out.append(f"  cfg   blake3 {config_hash(p).hex()}")
        tensors = [f"input  {engine.input.describe()}"]
        tensors += [f"output {o.describe()}" for o in getattr(engine, "outputs", ())]
        out += [f"  {t}" for t in tensors]
        out.append(
            f"  window {p.window} hop {p.hop} channels {','.join(p.channels)} from {p.source.port} "
            f"({p.source.protocol.value}, {p.source.baud} baud), postprocess {p.postprocess.kind.value}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from edge_agent.errors import AgentError

    try:
        if args.command == "check":
            lines: list[str] = []
            try:
                check_config(args.config, lines)
            finally:
                print("\n".join(lines))
            print("ok")
            return EXIT_OK
        from edge_agent.agent import run_agent
        from edge_agent.config import load_config

        return run_agent(load_config(args.config))
    except AgentError as e:
        if args.verbose:
            logging.getLogger(__name__).exception("failed")
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
