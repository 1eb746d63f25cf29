"""Provisioning bundles (docs/flash.md): what goes into ``fleet flash NAME``'s tarball, as pure functions.

A bundle is a gzip'd tar with one top directory ``edgeseal-<device>/``::

    MANIFEST.json            every other file: path, mode, size, SHA-256, BLAKE3, secret or not
    SHA256SUMS               the same SHA-256s in ``sha256sum -c`` form (checked before anything runs)
    install.sh               POSIX sh installer (system install, ``--prefix``, ``--uninstall``)
    verify.py                stdlib-only verifier of the manifest (BLAKE3 through the bundled wheel)
    requirements.txt         the agent's dependencies (not all of edgeseal's: see AGENT_DEPENDENCIES)
    config/agent.toml        the edge_agent config of this device
    config/ca.crt            the fleet CA (verifies the broker's TLS certificate)
    config/mqtt.pass         broker password                                 0600, secret
    config/claim.token       one-time claim token (absent once enrolled)     0600, secret
    config/operator.pub      the operator's public key (commands)
    config/collector.pub     the collector's public key (acks)
    config/models/*.tflite   the shipped model the pipeline runs
    systemd/edgeseal-agent.service
    wheels/edgeseal-*.whl    and, with --offline, every dependency's wheel for the target

Ordering rules the installer relies on: the manifest lists every file of the bundle except itself
and SHA256SUMS, in sorted order, and nothing else (install.sh and verify.py included); SHA256SUMS is
derived from it line for line; a file's tar mode equals its manifest mode; every secret is 0600.

The manifest cannot vouch for itself: a bundle rewritten with its manifest, SHA256SUMS and verify.py
passes every check the bundle carries. What stops it is the SHA-256 of the whole tarball, checked
with the device's own ``sha256sum`` before anything is unpacked (docs/flash.md "Tampering").

Nothing here does I/O except :func:`write_tar` and :func:`tar_differences`, which write to and read
from a stream they are given.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any

from fleet_cli.errors import UsageError

BUNDLE_FORMAT = 1
MANIFEST_NAME = "MANIFEST.json"
SHA256SUMS_NAME = "SHA256SUMS"
INSTALL_NAME = "install.sh"
VERIFY_NAME = "verify.py"
REQUIREMENTS_NAME = "requirements.txt"
UNIT_NAME = "edgeseal-agent.service"
CONFIG_DIR = "config"
WHEELS_DIR = "wheels"

# Where a system install puts things (docs/flash.md); --prefix DIR puts the same tree under DIR.
SYSTEM_VENV = "/opt/edgeseal/venv"
SYSTEM_ETC = "/etc/edgeseal"
SYSTEM_STATE = "/var/lib/edgeseal"
SYSTEM_USER = "edgeseal"

DEFAULT_SERIAL_PORT = "/dev/ttyACM0"  # a USB CDC microcontroller (Arduino, Pico) on a Pi
DEFAULT_BAUD = 115200  # the reference firmware's default (docs/firmware_bridge.md)
DEFAULT_MODEL = "vibration_int8.tflite"
PIPELINE_NAME = "vib"

# The agent's runtime dependencies, by normalised name: exactly what edge_agent, firmware_bridge and
# edge_protocol import (a test pins this against their imports). The operator-side ones (typer, rich,
# cryptography, amqtt, prometheus-client, platformdirs) never go onto a device: the installer puts the
# edgeseal wheel in with --no-deps and these from requirements.txt.
AGENT_DEPENDENCIES = frozenset(
    {"paho-mqtt", "blake3", "pynacl", "cbor2", "pyserial", "cobs", "numpy", "tomli"}
)
# tflite-runtime stopped at 2.14 and is built against numpy 1.x (docs/field-notes.md "TFLite runtimes").
TFLITE_RUNTIME_REQUIREMENTS = ("tflite-runtime==2.14.*", "numpy<2")

# Modes in the tar and the manifest.
MODE_SECRET = 0o600
MODE_FILE = 0o644
MODE_EXEC = 0o755
# A manifest of a few hundred wheels is tens of KiB; the verifier refuses anything over 4 MiB
# rather than parse it (the same bound is in fleet_cli/flash/templates/verify.py.tmpl).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# glibc of the default aarch64/x86_64 targets: 2.35 is Ubuntu 22.04, Debian 12 / Raspberry Pi OS
# bookworm have 2.36; manylinux wheels for any glibc from 2.17 (manylinux2014) up to it install there.
DEFAULT_GLIBC = (2, 35)
MIN_GLIBC_MINOR = 17  # manylinux2014 == manylinux_2_17: the oldest tag worth asking for
# Python of the default targets: 3.11 is Debian 12 / Raspberry Pi OS bookworm's python3.
DEFAULT_TARGET_PYTHON = (3, 11)
MIN_TARGET_PYTHON = (3, 10)  # pyproject's requires-python

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PYTHON = re.compile(r"^3\.(\d{1,2})$")
_GLIBC = re.compile(r"^2\.(\d{1,2})$")


class Runtime(str, enum.Enum):
    """The TFLite interpreter the device gets (docs/agent.md "Runtimes")."""

    AI_EDGE_LITERT = "ai-edge-litert"  # maintained, numpy 2; x86_64 and aarch64 wheels
    TFLITE_RUNTIME = "tflite-runtime"  # 2.14, numpy<2, for boards without an ai-edge-litert wheel


class Arch(str, enum.Enum):
    HOST = "host"
    AARCH64 = "linux-aarch64"
    X86_64 = "linux-x86_64"


# 32-bit ARM as uname -m and wheel platform tags name it. Neither TFLite runtime publishes a wheel for
# it (ai-edge-litert: x86_64 and aarch64; tflite-runtime 2.14: the same), so no bundle can carry one.
ARM32_MACHINES = frozenset({"arm", "armhf", "armv6l", "armv7l", "armv8l"})


def parse_arch(text: str) -> Arch:
    """``--platform``: one of :class:`Arch`; 32-bit ARM is refused with the reason."""
    try:
        return Arch(text.strip().lower())
    except ValueError:
        pass
    machine = text.strip().lower().removeprefix("linux-").removeprefix("linux_")
    if machine in ARM32_MACHINES:
        raise UsageError(
            "32-bit ARM has no TFLite runtime wheel; use a 64-bit OS (aarch64)",
            hint="on a Raspberry Pi 3, 4 or 5: Raspberry Pi OS (64-bit), then --platform linux-aarch64",
        )
    choices = ", ".join(a.value for a in Arch)
    raise UsageError(f"--platform must be one of {choices}, not {text!r}")


@dataclass(frozen=True)
class Target:
    """Which machine the bundle's wheels are for. ``host``: this interpreter, no platform options."""

    arch: Arch = Arch.HOST
    python: tuple[int, int] = DEFAULT_TARGET_PYTHON
    glibc: tuple[int, int] = DEFAULT_GLIBC

    def __post_init__(self) -> None:
        if self.python < MIN_TARGET_PYTHON:
            raise UsageError(
                f"Python {self.python[0]}.{self.python[1]} is too old for edgeseal (needs 3.10 or newer)"
            )
        if self.glibc[0] != 2 or self.glibc[1] < MIN_GLIBC_MINOR:
            raise UsageError(f"glibc {self.glibc[0]}.{self.glibc[1]} is older than manylinux2014 (2.17)")

    @property
    def cp(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    @property
    def machine(self) -> str:
        return "aarch64" if self.arch is Arch.AARCH64 else "x86_64"

    def platform_tags(self) -> tuple[str, ...]:
        """pip's ``--platform`` values: manylinux2014 and every manylinux_2_N up to the target's glibc."""
        if self.arch is Arch.HOST:
            return ()
        m = self.machine
        return (
            f"manylinux2014_{m}",
            *(f"manylinux_2_{n}_{m}" for n in range(MIN_GLIBC_MINOR, self.glibc[1] + 1)),
        )

    def pip_download_args(self) -> list[str]:
        """Options for ``pip download`` so that it picks wheels for the target, never sdists."""
        args = ["--only-binary=:all:"]
        if self.arch is Arch.HOST:
            return args
        for tag in self.platform_tags():
            args += ["--platform", tag]
        py = f"{self.python[0]}.{self.python[1]}"
        return [*args, "--python-version", py, "--implementation", "cp", "--abi", self.cp]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"platform": self.arch.value}
        if self.arch is not Arch.HOST:
            out.update(
                python=f"{self.python[0]}.{self.python[1]}",
                abi=self.cp,
                glibc=f"{self.glibc[0]}.{self.glibc[1]}",
                tags=list(self.platform_tags()),
            )
        return out


def parse_version(text: str, what: str) -> tuple[int, int]:
    """``3.11`` / ``2.36`` → (3, 11) / (2, 36); a UsageError naming ``what`` otherwise."""
    m = (_PYTHON if what == "python" else _GLIBC).match(text.strip())
    if not m:
        example = "3.11" if what == "python" else "2.36"
        raise UsageError(f"--{what} must look like {example}, not {text!r}")
    return (3 if what == "python" else 2, int(m.group(1)))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = _NAME.match(req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return _normalise(m.group(1))


def agent_requirements(dist_requires: Iterable[str], runtime: Runtime) -> list[str]:
    """The requirement lines a device installs, from edgeseal's own metadata (``Requires-Dist``).

    Base dependencies named in :data:`AGENT_DEPENDENCIES` keep their specifiers and markers (pip
    evaluates ``python_version < "3.11"`` for the target); the runtime comes from the ``agent`` extra,
    or is tflite-runtime 2.14 with numpy<2.
    """
    base: list[str] = []
    extra: list[str] = []
    for raw in dist_requires:
        req, _, marker = raw.partition(";")
        name = requirement_name(req)
        if 'extra == "agent"' in marker or "extra == 'agent'" in marker:
            extra.append(req.strip())
        elif "extra ==" in marker:
            continue
        elif name in AGENT_DEPENDENCIES:
            base.append(raw.strip())
    names = {requirement_name(r) for r in base}
    if not {"paho-mqtt", "pynacl", "blake3", "cbor2"} <= names:
        raise UsageError(
            "the installed edgeseal metadata does not list the agent's dependencies",
            hint="reinstall edgeseal (pip install -e .) so that its metadata is current",
        )
    if runtime is Runtime.AI_EDGE_LITERT:
        if not extra:
            raise UsageError("the installed edgeseal metadata has no 'agent' extra (ai-edge-litert)")
        return [*base, *extra]
    return [*base, *TFLITE_RUNTIME_REQUIREMENTS]


# -- files ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle, relative to its top directory."""

    path: str
    data: bytes = field(repr=False)
    mode: int = MODE_FILE
    secret: bool = False

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if not self.path or self.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad bundle path {self.path!r}")
        if self.secret and self.mode != MODE_SECRET:
            raise ValueError(f"secret {self.path} must be mode 0600")


def _blake3_hex(data: bytes) -> str:
    import blake3

    return str(blake3.blake3(data).hexdigest())


def manifest_entry(f: BundleFile) -> dict[str, Any]:
    return {
        "path": f.path,
        "mode": f"{f.mode:04o}",
        "size": len(f.data),
        "sha256": hashlib.sha256(f.data).hexdigest(),
        "blake3": _blake3_hex(f.data),
        "secret": f.secret,
    }


def render_manifest(files: Sequence[BundleFile], meta: Mapping[str, Any]) -> bytes:
    """``MANIFEST.json``: ``meta`` (device, fleet, target, …) and one entry per file, sorted by path."""
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise ValueError("a bundle path is used twice")
    if {MANIFEST_NAME, SHA256SUMS_NAME} & set(paths):
        raise ValueError("the manifest and SHA256SUMS are not listed in themselves")
    doc = {
        "format": BUNDLE_FORMAT,
        **meta,
        "files": [manifest_entry(f) for f in sorted(files, key=lambda f: f.path)],
    }
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8")


def render_sha256sums(manifest: bytes) -> bytes:
    """``SHA256SUMS`` in coreutils' format (two spaces: text mode), derived from the manifest."""
    doc = json.loads(manifest)
    return "".join(f"{e['sha256']}  {e['path']}\n" for e in doc["files"]).encode("ascii")


def write_tar(stream: IO[bytes], top: str, files: Sequence[BundleFile], *, mtime: int) -> None:
    """Write the bundle as a gzip'd tar to ``stream``: ``top/`` then every file, owned by root (0:0)."""
    with tarfile.open(fileobj=stream, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted(
            {"/".join(f.path.split("/")[:i]) for f in files for i in range(1, f.path.count("/") + 1)}
        )
        for d in ["", *dirs]:
            info = tarfile.TarInfo(f"{top}/{d}".rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o700 if d in ("", CONFIG_DIR) else MODE_EXEC
            info.mtime = mtime
            tar.addfile(info)
        for f in files:
            info = tarfile.TarInfo(f"{top}/{f.path}")
            info.size = len(f.data)
            info.mode = f.mode
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(f.data))


def sha256_of(stream: IO[bytes]) -> str:
    """SHA-256 of what is left to read of ``stream`` (hashlib.file_digest is Python 3.11+)."""
    digest = hashlib.sha256()
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def tar_differences(stream: IO[bytes], top: str, expected: Mapping[str, str]) -> list[str]:
    """How a bundle tarball differs from what was built: ``expected`` maps every file's path (relative
    to ``top``) to its SHA-256. One line per file that changed, was added, is missing or is not a
    regular file, in path order; empty when every file matches. Reads ``stream``, extracts nothing."""
    found: dict[str, str] = {}
    odd: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r:gz") as tar:
            for member in tar:
                name = member.name.rstrip("/")
                rel = name[len(top) + 1 :] if name.startswith(f"{top}/") else name
                if member.isdir() and (name == top or rel != name):
                    continue
                data = tar.extractfile(member) if member.isfile() else None
                if data is None:
                    odd[rel] = f"{rel} is not a regular file"
                    continue
                found[rel] = sha256_of(data)
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return ["the archive is not a readable tar.gz"]
    out = dict(odd)
    for path in set(found) | set(expected):
        if path in odd:
            continue
        if path not in expected:
            out[path] = f"{path} was added"
        elif path not in found:
            out[path] = f"{path} is missing"
        elif found[path] != expected[path]:
            out[path] = f"{path} changed"
    return [out[p] for p in sorted(out)]


# -- rendered texts -----------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True)
class AgentSettings:
    """What the device's ``agent.toml`` says. Paths are relative to the config directory except
    ``state_dir`` (the installer rewrites it for --prefix installs). The defaults are a bundle's;
    ``fleet demo`` sets the rest (absolute paths, no TLS on the embedded broker, quicker timers)."""

    device: str
    fleet: str
    broker_host: str
    broker_port: int
    operator_key: str  # hex
    collector_keys: tuple[str, ...]  # hex
    serial_port: str = DEFAULT_SERIAL_PORT
    baud: int = DEFAULT_BAUD
    model: str = DEFAULT_MODEL
    labels: tuple[str, ...] = ("normal", "imbalance", "bearing")
    channels: tuple[str, ...] = ("ax", "ay", "az")
    window: int = 128
    hop: int = 64
    claim: bool = True  # the bundle carries claim.token
    state_dir: str = SYSTEM_STATE
    heartbeat_s: float = 60.0
    written_by: str = "`fleet flash`"
    model_dir: str = "models"
    tls_ca: str | None = "ca.crt"  # None: plain MQTT
    password_file: str | None = "mqtt.pass"  # noqa: S105 - a file name; None: no username, no password
    claim_token_file: str = "claim.token"  # noqa: S105 - a file name
    protocol: str | None = None  # None: the agent's default (auto)
    resend_after_s: float | None = None  # None: the agent's defaults for these three
    backoff_min_s: float | None = None
    backoff_max_s: float | None = None

    def __post_init__(self) -> None:
        if not self.serial_port or any(c in self.serial_port for c in '"\\\n\r\t'):
            raise UsageError(f"--serial-port {self.serial_port!r} is not a usable device path")
        if not 1 <= self.baud <= 12_000_000:  # edge_agent.config's own bound on source.baud
            raise UsageError(f"--baud must be between 1 and 12000000, not {self.baud}")


def render_agent_config(s: AgentSettings) -> str:
    """The edge_agent TOML (docs/agent.md) for one device: TLS to the fleet's broker, password file,
    claim token, operator/collector trust, fleet-ack delivery, one pipeline with the shipped model."""
    lines = [
        f"# edge_agent configuration of device {s.device} in fleet {s.fleet}, written by {s.written_by}.",
        "# Relative paths are relative to this file's directory. Reference: docs/agent.md.",
        "[device]",
        f"id = {_toml_str(s.device)}",
        f"fleet = {_toml_str(s.fleet)}",
        f"state_dir = {_toml_str(s.state_dir)}",
        "",
        "[mqtt]",
        f"host = {_toml_str(s.broker_host)}",
        f"port = {s.broker_port}",
    ]
    if s.protocol is not None:
        lines.append(f"protocol = {_toml_str(s.protocol)}")
    for key, seconds in (
        ("resend_after_s", s.resend_after_s),
        ("backoff_min_s", s.backoff_min_s),
        ("backoff_max_s", s.backoff_max_s),
    ):
        if seconds is not None:
            lines.append(f"{key} = {float(seconds)!r}")
    if s.tls_ca is not None:
        lines.append(f"tls_ca = {_toml_str(s.tls_ca)}")
    if s.password_file is not None:
        lines += [f"username = {_toml_str(s.device)}", f"password_file = {_toml_str(s.password_file)}"]
    lines.append("")
    if s.claim:
        lines += ["[enrol]", f"claim_token_file = {_toml_str(s.claim_token_file)}", ""]
    keys = ", ".join(_toml_str(k) for k in s.collector_keys)
    lines += [
        "[trust]",
        f"operator_key = {_toml_str(s.operator_key)}",
        f"collector_keys = [{keys}]",
        'delivery = "fleet-ack"',
        "",
        "[heartbeat]",
        f"interval_s = {s.heartbeat_s!r}",
        "",
        "[[pipeline]]",
        f"name = {_toml_str(PIPELINE_NAME)}",
        f"model = {_toml_str(s.model_dir + '/' + s.model)}",
        f'source = {{ port = {_toml_str(s.serial_port)}, baud = {s.baud}, protocol = "frames" }}',
        f"channels = [{', '.join(_toml_str(c) for c in s.channels)}]",
        f"window = {s.window}",
        f"hop = {s.hop}",
        f'postprocess = {{ kind = "classify", labels = [{", ".join(_toml_str(x) for x in s.labels)}] }}',
        "",
    ]
    return "\n".join(lines)


# Serial device classes as named in /proc/devices; systemd's DeviceAllow=char-NAME allows the whole
# major, so a re-plugged adapter that comes back as ttyACM1 still works (systemd.resource-control(5)).
SERIAL_CLASSES = {"/dev/ttyACM": "char-ttyACM", "/dev/ttyUSB": "char-ttyUSB", "/dev/ttyAMA": "char-ttyAMA"}


def device_allow(serial_port: str) -> list[str]:
    """``DeviceAllow=`` lines for the pipeline's serial port."""
    allow = [cls for prefix, cls in SERIAL_CLASSES.items() if serial_port.startswith(prefix)]
    if serial_port.startswith("/dev/serial/"):  # by-id / by-path links: a USB adapter behind them
        allow = ["char-ttyACM", "char-ttyUSB"]
    elif serial_port.startswith("/dev/ttyS"):
        allow = ["char-ttyS"]
    elif not allow:
        allow = [serial_port]
    return [f"DeviceAllow={a} rw" for a in allow]


def render_unit(device: str, serial_port: str) -> str:
    """The hardened systemd unit. ``Type=notify`` with a watchdog: the agent sends READY=1 once started
    and WATCHDOG=1 only while its MQTT session and serial reader threads are alive
    (edge_agent/watchdog.py), so systemd restarts a wedged agent."""
    lines = [
        "# edgeseal agent, written by `fleet flash` (docs/flash.md).",
        "[Unit]",
        f"Description=edgeseal agent for device {device}: serial sensors -> TFLite -> signed results",
        "Wants=network-online.target",
        "After=network-online.target time-sync.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        "# The agent pings every WatchdogSec/2 while healthy; silence for 30 s means wedged: restart.",
        "WatchdogSec=30",
        f"User={SYSTEM_USER}",
        f"Group={SYSTEM_USER}",
        "SupplementaryGroups=dialout",
        f"ExecStart={SYSTEM_VENV}/bin/edge-agent run --config {SYSTEM_ETC}/agent.toml",
        "Restart=on-failure",
        "RestartSec=5",
        "# The agent exits within 5 s of SIGTERM (docs/agent.md); leave it time to flush.",
        "TimeoutStopSec=20",
        "Environment=PYTHONUNBUFFERED=1",
        "# State: the device key, boot counter and outbox. Nothing else is writable.",
        "StateDirectory=edgeseal",
        "StateDirectoryMode=0700",
        f"ReadWritePaths={SYSTEM_STATE}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "# The serial device, and nothing else of /dev beyond the pseudo devices (null, urandom, ...).",
        "# PrivateDevices= stays off: it would hide the serial port.",
        "DevicePolicy=closed",
        *device_allow(serial_port),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _template(name: str) -> str:
    return resources.files("fleet_cli.flash").joinpath("templates", name).read_text(encoding="utf-8")


def render_install_script(device: str, fleet: str) -> str:
    """``install.sh`` (fleet_cli/flash/templates/install.sh.tmpl) for one device."""
    return _template("install.sh.tmpl").replace("@@DEVICE@@", device).replace("@@FLEET@@", fleet)


def render_verifier() -> str:
    """``verify.py`` (templates/verify.py.tmpl): stdlib only, BLAKE3 through a bundled wheel."""
    return _template("verify.py.tmpl")


def render_requirements(requirements: Sequence[str]) -> str:
    return "# the agent's dependencies, written by `fleet flash`\n" + "".join(f"{r}\n" for r in requirements)


def render_user_data(device: str, bundle_file: str, top: str, manifest_sha256: str) -> str:
    """cloud-init user-data that installs the bundle at first boot, then deletes it from the boot
    partition (it holds the device's secrets, on a FAT file system anyone can read)."""
    found = f"$d/edgeseal/{bundle_file}"
    script = (
        "set -eu; "
        f'for d in /boot/firmware /boot; do [ -f "{found}" ] && B="{found}" && break; done; '
        f'[ -n "${{B:-}}" ] || {{ echo "edgeseal: no {bundle_file} on the boot partition" >&2; exit 1; }}; '
        "W=$(mktemp -d /root/edgeseal-install.XXXXXX); "
        'tar -xzf "$B" -C "$W"; '
        f'sh "$W/{top}/install.sh" --manifest-sha256 {manifest_sha256}; '
        'rm -rf "$W"; rm -f "$B"'
    )
    return "\n".join(
        [
            "#cloud-config",
            f"# edgeseal: install the agent of device {device} at first boot (`fleet flash --boot`).",
            "# The bundle is removed from the boot partition once it is installed.",
            "runcmd:",
            f"  - [sh, -c, {json.dumps(script)}]",
            "",
        ]
    )


def render_meta_data(device: str, instance: str) -> str:
    """cloud-init NoCloud meta-data, written only when the partition has none."""
    return f"instance-id: edgeseal-{device}-{instance}\n"


def wheel_tags(filename: str) -> tuple[str, str, str]:
    """(python, abi, platform) tags of a wheel file name (PEP 427: name-ver[-build]-py-abi-plat.whl)."""
    if not filename.endswith(".whl") or filename.count("-") < 4:
        raise UsageError(f"{filename} is not a wheel file name")
    py, abi, plat = filename[: -len(".whl")].split("-")[-3:]
    return py, abi, plat


def check_wheel_tags(filenames: Iterable[str], target: Target) -> None:
    """Refuse anything that is not a wheel installable on ``target`` (python, abi and platform tags)."""
    allowed_plats = {"any", *target.platform_tags()}
    for name in filenames:
        py, abi, plat = wheel_tags(name)
        if target.arch is Arch.HOST:
            continue
        if not set(plat.split(".")) & allowed_plats:
            raise UsageError(
                f"{name} is for {plat}, not {target.arch.value} "
                f"(glibc <= {target.glibc[0]}.{target.glibc[1]})"
            )
        pys = py.split(".")
        ok_py = any(
            p.startswith("py3")
            or p == target.cp
            or (abi == "abi3" and p.startswith("cp3") and int(p[3:] or 0) <= target.python[1])
            for p in pys
        )
        if not ok_py or abi not in ("none", "abi3", target.cp):
            raise UsageError(f"{name} is for {py}/{abi}, not CPython {target.python[0]}.{target.python[1]}")
