"""``fleet flash NAME``: build a device's provisioning bundle, install it over SSH, or put it on a boot
partition with a cloud-init first-boot hook (docs/flash.md, docs/flash.md).

The texts and the manifest are made by the pure :mod:`fleet_cli.flash`; this module does the I/O: it
reads the fleet home and registry, builds the edgeseal wheel from the source tree, downloads the
dependency wheels for the target with ``pip download``, writes the tarball, and runs the system's
``ssh``/``scp`` through a :class:`Runner` (``--dry-run`` swaps in one that only prints).

An SSH install runs nothing from the bundle until the device's own ``sha256sum`` has shown that the
tarball there is byte for byte the one written here; the bundle's install.sh and verify.py cannot
vouch for themselves (docs/flash.md "Tampering").
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Protocol

import typer

from edge_protocol.keys import atomic_write, read_private_key
from fleet_cli import flash, shipped_model
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption
from fleet_cli.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

DISTRIBUTION = "edgeseal"
# ssh gives up on a host that does not answer within 10 s (ssh_config(5) ConnectTimeout); a Pi on
# Wi-Fi answers in well under a second.
SSH_CONNECT_TIMEOUT_S = 10
# A dead connection during the install is noticed after 4 x 15 s without an answer (ServerAlive*).
SSH_ALIVE_INTERVAL_S = 15
SSH_ALIVE_COUNT = 4
# ssh's own exit status for connection and authentication failures (ssh(1) "EXIT STATUS").
SSH_FAILED = 255
# The wheel build and pip download run unattended; 15 minutes covers a slow mirror and a ~60 MB set.
PIP_TIMEOUT_S = 900
# A refused bundle names at most this many of the files that differ (a one-line error).
MAX_DIFFS_SHOWN = 4
# What ssh prints when it never got to authenticate (OpenSSH's and the resolver's messages).
UNREACHABLE_MARKERS = (
    "could not resolve",
    "name or service not known",
    "connection refused",
    "timed out",
    "no route to host",
    "network is unreachable",
    "connection closed",
    "connection reset",
)
BOOT_MARKERS = ("config.txt", "cmdline.txt")  # what every Raspberry Pi boot partition holds
_SSH_TARGET = re.compile(
    r"^(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?$"
)


class BundleError(FleetError):
    """The bundle cannot be built (source tree, wheel build, pip download, output file)."""


class RemoteError(FleetError):
    """Installing over SSH failed: unreachable host, authentication, a failed step."""


class BundleMismatch(RemoteError):
    """The bundle on the device is not the one that was built: refused before anything of it ran."""


# -- the edgeseal wheel -----------------------------------------------------------------------------


def source_tree() -> Path | None:
    """The checkout edgeseal runs from (editable install or PYTHONPATH), or None when it is installed
    from a wheel. Recognised by its pyproject.toml naming the edgeseal distribution."""
    candidates: list[Path] = []
    try:
        direct = importlib.metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        direct = None
    if direct:
        from urllib.parse import unquote, urlparse

        info = json.loads(direct)
        url = urlparse(str(info.get("url", "")))
        if url.scheme == "file" and "dir_info" in info:
            candidates.append(Path(unquote(url.path)))
    candidates.append(Path(__file__).resolve().parent.parent)
    for root in candidates:
        try:
            meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if (
            meta.get("project", {}).get("name") == DISTRIBUTION
            and (root / "fleet_cli" / "flash.py").is_file()
        ):
            return root
    return None


def _copy_sources(root: Path, dest: Path) -> None:
    """Copy what the wheel is built from (pyproject, README, the packages) to a scratch directory, so
    the build never writes build/ or egg-info into the checkout."""
    meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    include = (
        meta.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", ["*"])
    )
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.py", "setup.cfg"):
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    for child in sorted(root.iterdir()):
        if (child / "__init__.py").is_file() and any(fnmatch.fnmatch(child.name, p) for p in include):
            shutil.copytree(child, dest / child.name, ignore=ignore)


def _run_pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    log.debug("running %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise BundleError(f"{what}: pip did not finish within {PIP_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise BundleError(
            f"{what}: {detail}", hint="run with -v for pip's output; is the package index reachable?"
        )


def build_wheel(out: Path) -> Path:
    """Build the edgeseal wheel from the source tree into ``out``."""
    root = source_tree()
    if root is None:
        raise BundleError(
            "edgeseal is installed from a wheel, not from a source tree: its wheel cannot be rebuilt here",
            hint="pass --wheel FILE (the edgeseal wheel this fleet CLI was installed from)",
        )
    with tempfile.TemporaryDirectory(prefix="edgeseal-wheel-") as tmp:
        src = Path(tmp) / "src"
        _copy_sources(root, src)
        _run_pip(["wheel", "--no-deps", "--quiet", "-w", str(out), str(src)], "building the edgeseal wheel")
    wheels = sorted(out.glob("edgeseal-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"building the edgeseal wheel gave {len(wheels)} wheels in {out}")
    return wheels[0]


def download_wheels(requirements: Path, target: flash.Target, out: Path) -> list[Path]:
    """``pip download`` the agent's dependencies as wheels for ``target`` into ``out``."""
    _run_pip(
        ["download", "--quiet", *target.pip_download_args(), "-d", str(out), "-r", str(requirements)],
        f"downloading the dependency wheels for {target.arch.value}",
    )
    return sorted(out.iterdir())


# -- building -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleOptions:
    device: str
    target: flash.Target = field(default_factory=flash.Target)
    offline: bool = False
    runtime: flash.Runtime = flash.Runtime.AI_EDGE_LITERT
    serial_port: str = flash.DEFAULT_SERIAL_PORT
    baud: int = flash.DEFAULT_BAUD
    broker_host: str | None = None  # default: fleet.toml [broker] host
    broker_port: int | None = None  # default: fleet.toml [broker] tls_port
    wheel: Path | None = None  # a ready edgeseal wheel instead of building one


@dataclass(frozen=True)
class Bundle:
    path: Path
    top: str
    manifest_sha256: str
    size: int
    files: int
    secrets: tuple[str, ...]
    claim: bool
    sha256: str = ""  # of the tarball, from the bytes as they were written
    contents: Mapping[str, str] = field(default_factory=dict, repr=False)  # path -> SHA-256, all files


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _target_meta(target: flash.Target) -> dict[str, object]:
    meta = target.describe()
    if target.arch is flash.Arch.HOST:
        meta["machine"] = platform.machine().lower()
        meta["python"] = f"{sys.version_info[0]}.{sys.version_info[1]}"
    else:
        meta["machine"] = target.machine
    return meta


def bundle_files(
    home: FleetHome, options: BundleOptions, workdir: Path
) -> tuple[list[flash.BundleFile], dict[str, object]]:
    """Every file of the bundle and the manifest's metadata."""
    with Registry(home.registry_db) as reg:
        creds = reg.device_credentials(options.device)
    operator = read_private_key(home.operator_key).public_key.hex()
    collector = read_private_key(home.collector_key).public_key.hex()
    models = shipped_model.models_dir()
    facts = shipped_model.read_facts(models)
    settings = flash.AgentSettings(
        device=options.device,
        fleet=home.fleet,
        broker_host=options.broker_host or home.config.broker.host,
        broker_port=options.broker_port or home.config.broker.tls_port,
        operator_key=operator,
        collector_keys=(collector,),
        serial_port=options.serial_port,
        baud=options.baud,
        labels=facts.labels,
        channels=facts.channels,
        window=facts.window,
        hop=facts.hop,
        claim=creds.claim_token is not None,
    )
    requirements = flash.agent_requirements(importlib.metadata.requires(DISTRIBUTION) or [], options.runtime)
    req_text = flash.render_requirements(requirements)
    files = [
        flash.BundleFile(
            flash.INSTALL_NAME,
            flash.render_install_script(options.device, home.fleet).encode(),
            flash.MODE_EXEC,
        ),
        flash.BundleFile(flash.VERIFY_NAME, flash.render_verifier().encode()),
        flash.BundleFile(flash.REQUIREMENTS_NAME, req_text.encode()),
        flash.BundleFile("config/agent.toml", flash.render_agent_config(settings).encode()),
        flash.BundleFile("config/ca.crt", _read(home.ca_cert, "the fleet CA")),
        flash.BundleFile(
            "config/mqtt.pass", (creds.password + "\n").encode(), flash.MODE_SECRET, secret=True
        ),
        flash.BundleFile("config/operator.pub", (operator + "\n").encode()),
        flash.BundleFile("config/collector.pub", (collector + "\n").encode()),
        flash.BundleFile(
            f"config/models/{flash.DEFAULT_MODEL}", _read(models / flash.DEFAULT_MODEL, "the shipped model")
        ),
        flash.BundleFile(
            f"systemd/{flash.UNIT_NAME}", flash.render_unit(options.device, options.serial_port).encode()
        ),
    ]
    if creds.claim_token is not None:
        files.append(
            flash.BundleFile(
                "config/claim.token", (creds.claim_token + "\n").encode(), flash.MODE_SECRET, secret=True
            )
        )
    wheel_dir = workdir / "wheels"
    wheel_dir.mkdir()
    if options.wheel is not None:
        if not re.match(r"^edgeseal-[^-]+-.*\.whl$", options.wheel.name):
            raise UsageError(f"--wheel {options.wheel} is not an edgeseal wheel (edgeseal-VERSION-*.whl)")
        wheel = options.wheel
    else:
        wheel = build_wheel(workdir / "build")
    files.append(flash.BundleFile(f"{flash.WHEELS_DIR}/{wheel.name}", _read(wheel, "the edgeseal wheel")))
    if options.offline:
        req_file = workdir / flash.REQUIREMENTS_NAME
        req_file.write_text(req_text, encoding="utf-8")
        downloaded = download_wheels(req_file, options.target, wheel_dir)
        flash.check_wheel_tags([p.name for p in downloaded], options.target)
        files += [flash.BundleFile(f"{flash.WHEELS_DIR}/{p.name}", _read(p, "a wheel")) for p in downloaded]
    meta: dict[str, object] = {
        "device": options.device,
        "fleet": home.fleet,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgeseal": importlib.metadata.version(DISTRIBUTION),
        "target": _target_meta(options.target),
        "offline": options.offline,
        "runtime": options.runtime.value,
        "requirements": requirements,
        "broker": f"{settings.broker_host}:{settings.broker_port}",
        "claim": settings.claim,
    }
    return files, meta


def build_bundle(home: FleetHome, options: BundleOptions, out: Path) -> Bundle:
    """Build the bundle of ``options.device`` and write it to ``out`` (0600: it holds secrets)."""
    with tempfile.TemporaryDirectory(prefix="edgeseal-flash-") as tmp:
        files, meta = bundle_files(home, options, Path(tmp))
        manifest = flash.render_manifest(files, meta)
        all_files = [
            *files,
            flash.BundleFile(flash.MANIFEST_NAME, manifest),
            flash.BundleFile(flash.SHA256SUMS_NAME, flash.render_sha256sums(manifest)),
        ]
        top = f"edgeseal-{options.device}"
        out = out.expanduser().absolute()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w+b") as stream:
                flash.write_tar(
                    stream, top, all_files, mtime=int(dt.datetime.now(dt.timezone.utc).timestamp())
                )
                stream.flush()
                os.fsync(stream.fileno())
                # Hashed through the descriptor it was written with: whatever happens to the file by
                # name afterwards, this is the tarball the device must receive.
                stream.seek(0)
                sha256 = flash.sha256_of(stream)
            tmp_out.replace(out)
        except OSError as e:
            raise BundleError(f"cannot write the bundle {out}: {e.strerror or e}") from e
    return Bundle(
        path=out,
        top=top,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        size=out.stat().st_size,
        files=len(all_files),
        secrets=tuple(f.path for f in files if f.secret),
        claim=bool(meta["claim"]),
        sha256=sha256,
        contents={f.path: hashlib.sha256(f.data).hexdigest() for f in all_files},
    )


# -- SSH ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str  # IPv6 without brackets
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def scp_destination(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{path}"


def parse_ssh_target(text: str) -> SshTarget:
    m = _SSH_TARGET.match(text.strip())
    if not m:
        raise UsageError(
            f"--ssh wants USER@HOST[:PORT], not {text!r}", hint="e.g. --ssh pi@raspberrypi.local:22"
        )
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--ssh port {port} is not between 1 and 65535")
    return SshTarget(m["user"], m["host"].strip("[]"), port)


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    stream: bool  # True: the output goes to the terminal; False: captured to check it or explain a failure
    expect_sha256: str | None = None  # the output must start with this SHA-256 (the bundle check)
    on_failure: bool = False  # runs only when a step after the first one failed (removes what it left)


# Where an SSH install unpacks the bundle on the device (a private directory is made in it and removed).
DEFAULT_REMOTE_TMP = "/tmp"  # noqa: S108 - a fresh 0700 directory of a random name, never reused
ARCHIVE = "bundle.tar.gz"  # the bundle's name in that directory


def check_remote_tmp(path: str) -> str:
    """An absolute directory on the device that no shell changes, or a UsageError.

    scp hands the destination to the remote user's shell unquoted when it runs in legacy mode (scp -O,
    and every OpenSSH before 9.0), and passes it literally over SFTP; only a path that shlex.quote
    leaves alone means the same directory both ways."""
    if not path.startswith("/") or shlex.quote(path) != path:
        raise UsageError(
            f"--remote-tmp must be an absolute directory on the device, got {path!r}",
            hint="use letters, digits and _ @ % + = : , . / - only: "
            "scp in legacy mode gives the path to the remote shell",
        )
    return path


def ssh_steps(
    target: SshTarget,
    bundle: Bundle,
    *,
    options: Sequence[str] = (),
    identity: Path | None = None,
    remote_prefix: str | None = None,
    remote_dir: str | None = None,
    remote_tmp: str = DEFAULT_REMOTE_TMP,
) -> list[Step]:
    """The commands of an SSH install: make a private directory, copy the bundle, check it with the
    device's sha256sum, then check it again, unpack and install in one command; and the clean-up
    that runs when a step fails after the directory was made."""
    # mkdir (not mkdir -p) of a fresh random name fails rather than reuse anything already there.
    remote_dir = remote_dir or f"{remote_tmp.rstrip('/')}/edgeseal-flash-{secrets.token_hex(6)}"
    common = [
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
        "-o", f"ServerAliveInterval={SSH_ALIVE_INTERVAL_S}",
        "-o", f"ServerAliveCountMax={SSH_ALIVE_COUNT}",
    ]  # fmt: skip
    for opt in options:
        common += ["-o", opt]
    if identity is not None:
        common += ["-i", str(identity)]
    ssh = ["ssh", *common, *(["-p", str(target.port)] if target.port else []), target.destination, "--"]
    scp = ["scp", "-q", *common, *(["-P", str(target.port)] if target.port else [])]
    install = ["sh", f"{bundle.top}/{flash.INSTALL_NAME}", "--manifest-sha256", bundle.manifest_sha256]
    if remote_prefix is not None:
        install += ["--prefix", remote_prefix, "--no-systemd"]
    elif target.user != "root":
        install = ["sudo", "-n", *install]
    d = shlex.quote(remote_dir)
    # The check step reports the device's sha256sum of what arrived, for this side to compare; the
    # install step compares again in the command that unpacks, so nothing can change the tarball in
    # between. Only the device's coreutils and these commands judge the bundle (docs/flash.md
    # "Tampering"): the bundle's own install.sh and verify.py run only after it has passed.
    same = f'sum=$(sha256sum {ARCHIVE}) && [ "${{sum%% *}}" = {shlex.quote(bundle.sha256)} ]'
    script = (
        f"cd {d} || exit 1; rc=0; {same} && tar -xzf {ARCHIVE} && {shlex.join(install)} || rc=$?; "
        f"cd / && rm -rf {d}; exit $rc"
    )
    return [
        Step("connect", (*ssh, f"umask 077 && mkdir -m 700 {d}"), stream=False),
        Step(
            "copy",
            (*scp, str(bundle.path), target.scp_destination(f"{remote_dir}/{ARCHIVE}")),
            stream=False,
        ),
        Step("check", (*ssh, f"cd {d} && sha256sum {ARCHIVE}"), stream=False, expect_sha256=bundle.sha256),
        Step("install", (*ssh, script), stream=True),
        Step("clean up", (*ssh, f"rm -rf {d}"), stream=False, on_failure=True),
    ]


def explain_ssh_failure(target: SshTarget, stderr: str) -> RemoteError:
    """One line for what ssh/scp said when it exited 255 (or failed to connect)."""
    where = f"{target.host}:{target.port or 22}"
    lines = [
        ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently")
    ]
    last = lines[-1] if lines else "no message"
    low = stderr.lower()
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return RemoteError(
            f"the host key of {where} is unknown or changed: {last}",
            hint="check it and add it to known_hosts (ssh-keyscan), "
            "or pass -o StrictHostKeyChecking=accept-new",
        )
    if "permission denied" in low or "too many authentication failures" in low:
        return RemoteError(
            f"authentication to {target.destination} on {where} failed: {last}",
            hint="set up key login (ssh-copy-id) or pass --identity FILE; "
            "passwords cannot be typed here (BatchMode)",
        )
    if any(marker in low for marker in UNREACHABLE_MARKERS):
        return RemoteError(
            f"cannot reach {where}: {last}", hint="is the device on, on the network, and running sshd?"
        )
    return RemoteError(f"ssh to {where} failed: {last}")


class Runner(Protocol):
    """Runs one step; returns (exit status, captured output: stdout, then stderr)."""

    def __call__(self, step: Step) -> tuple[int, str]: ...


def run_step(step: Step) -> tuple[int, str]:
    if step.stream:
        return subprocess.run(step.argv, stdin=subprocess.DEVNULL, check=False).returncode, ""
    done = subprocess.run(step.argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def explain_mismatch(target: SshTarget, bundle: Bundle | None, got: str) -> BundleMismatch:
    """The refusal when the device's sha256sum of the bundle is not the one written here; names the
    files that differ when the copy on this machine shows them (else the change happened after scp
    read it)."""
    where = "the copy on this machine is intact: it changed on the way or on the device"
    if bundle is not None:
        try:
            with bundle.path.open("rb") as stream:
                diffs = flash.tar_differences(stream, bundle.top, bundle.contents)
        except OSError as e:
            diffs = [f"{bundle.path} cannot be read ({e.strerror or e})"]
        if diffs:
            shown = diffs[:MAX_DIFFS_SHOWN]
            more = len(diffs) - len(shown)
            where = "; ".join(shown) + (f"; {more} more" if more else "")
    return BundleMismatch(
        f"refused: the bundle on {target.host} is not the one fleet flash built ({where}); "
        "nothing of it was unpacked or run",
        hint=f"its SHA-256 there is {got or 'unknown'}; find out who can write the bundle file, "
        "then flash again",
    )


def install_over_ssh(
    target: SshTarget, steps: Sequence[Step], runner: Runner = run_step, *, bundle: Bundle | None = None
) -> None:
    """Run the steps in order; the first failure is a :class:`RemoteError` with one line and a hint,
    raised after the clean-up steps ran (when the remote directory was made). ``bundle`` only
    improves the refusal of a bundle that changed: it names the files that differ."""
    for tool in ("ssh", "scp"):
        if shutil.which(tool) is None:
            raise RemoteError(
                f"{tool} not found", hint="install the OpenSSH client (apt-get install openssh-client)"
            )
    work = [s for s in steps if not s.on_failure]
    for i, step in enumerate(work):
        log.info("ssh step %s: %s", step.name, shlex.join(step.argv))
        code, out = runner(step)
        problem = _step_problem(target, step, code, out, bundle)
        if problem is None:
            continue
        if i > 0:
            for cleanup in (s for s in steps if s.on_failure):
                log.info("ssh step %s: %s", cleanup.name, shlex.join(cleanup.argv))
                runner(cleanup)  # best effort: the error below is what the operator needs
        raise problem


def _step_problem(
    target: SshTarget, step: Step, code: int, out: str, bundle: Bundle | None
) -> RemoteError | None:
    if code == 0:
        if step.expect_sha256 is None:
            return None
        # sha256sum's line "HEX  bundle.tar.gz" ("*" before the name in binary mode), wherever a
        # chatty login script put it among other output
        lines = (ln.split() for ln in out.splitlines())
        got = next((p[0].lower() for p in lines if len(p) == 2 and p[1].lstrip("*") == ARCHIVE), "")
        return None if got == step.expect_sha256 else explain_mismatch(target, bundle, got)
    last = (out.strip().splitlines() or ["?"])[-1]
    if code == SSH_FAILED or (step.name != "install" and any(
        s in out.lower() for s in ("connect", "permission denied", "host key", "resolve")
    )):  # fmt: skip
        return explain_ssh_failure(target, out)
    if step.name == "connect":
        return RemoteError(f"cannot make a private directory in /tmp on {target.host}: {last}")
    if step.name == "copy":
        return RemoteError(f"copying the bundle to {target.host} failed: {last}")
    if step.expect_sha256 is not None:
        return RemoteError(
            f"cannot check the bundle on {target.host}: {last}",
            hint="the device needs sha256sum (coreutils); nothing of the bundle was run",
        )
    return RemoteError(
        f"the installer failed on {target.host} (exit status {code})",
        hint="its output is above; when sudo wants a password, give the user passwordless sudo or use root@",
    )


# -- boot partition -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootPlan:
    bundle: Path
    user_data: Path
    meta_data: Path | None  # written only when the partition has none


def plan_boot(boot: Path, device: str, *, force: bool) -> BootPlan:
    """Where the bundle and the hook go on ``boot``; refuses what would overwrite or look wrong."""
    boot = boot.expanduser().absolute()
    if not boot.is_dir():
        raise UsageError(f"--boot {boot} is not a directory", hint="mount the SD card's boot partition first")
    if not force and not any((boot / m).exists() for m in BOOT_MARKERS):
        raise UsageError(
            f"--boot {boot} does not look like a Raspberry Pi boot partition (no config.txt or cmdline.txt)",
            hint="point it at the mounted boot (FAT) partition, or --force to write anyway",
        )
    user_data = boot / "user-data"
    if user_data.exists() and not force:
        raise UsageError(
            f"{user_data} exists already (Raspberry Pi Imager writes one); refusing to overwrite it",
            hint="--force replaces it (its users, Wi-Fi and SSH settings go), "
            "or add the runcmd entry by hand (docs/flash.md)",
        )
    meta = boot / "meta-data"
    return BootPlan(boot / "edgeseal" / f"{device}.tar.gz", user_data, None if meta.exists() else meta)


def write_boot(plan: BootPlan, bundle: Bundle, device: str) -> None:
    try:
        plan.bundle.parent.mkdir(exist_ok=True)
        if bundle.path != plan.bundle:
            shutil.copyfile(bundle.path, plan.bundle)
        text = flash.render_user_data(device, plan.bundle.name, bundle.top, bundle.manifest_sha256)
        atomic_write(plan.user_data, text.encode("utf-8"), 0o644)
        if plan.meta_data is not None:
            instance = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            atomic_write(plan.meta_data, flash.render_meta_data(device, instance).encode("utf-8"), 0o644)
    except OSError as e:
        raise BundleError(
            f"cannot write to the boot partition {plan.user_data.parent}: {e.strerror or e}"
        ) from e


# -- the command ----------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def flash_device(
    *,
    home: FleetHome,
    options: BundleOptions,
    out: Path | None,
    ssh: str | None = None,
    ssh_options: Sequence[str] = (),
    identity: Path | None = None,
    remote_prefix: str | None = None,
    remote_tmp: str = DEFAULT_REMOTE_TMP,
    boot: Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    runner: Runner = run_step,
) -> Bundle:
    """Build the bundle and, as asked, install it over SSH or write it to a boot partition."""
    if out is None and ssh is None and boot is None:
        raise UsageError("say where the bundle goes: --bundle OUT.tar.gz, --ssh USER@HOST or --boot DIR")
    if ssh is not None and boot is not None:
        raise UsageError("--ssh and --boot do not go together: one device is installed one way")
    if remote_prefix is not None and ssh is None:
        raise UsageError("--remote-prefix only goes with --ssh")
    if remote_tmp != DEFAULT_REMOTE_TMP and ssh is None:
        raise UsageError("--remote-tmp only goes with --ssh")
    check_remote_tmp(remote_tmp)
    target = parse_ssh_target(ssh) if ssh is not None else None
    plan = plan_boot(boot, options.device, force=force) if boot is not None else None
    with tempfile.TemporaryDirectory(prefix="edgeseal-bundle-") as tmp:
        path = out or (
            plan.bundle if plan is not None and not dry_run else Path(tmp) / f"{options.device}.tar.gz"
        )
        bundle = build_bundle(home, options, path)
        where = bundle.path if out or plan else "(temporary)"
        offline = ", offline" if options.offline else ""
        typer.echo(
            f"bundle {where}: {bundle.files} files, {_mib(bundle.size)}, "
            f"target {options.target.arch.value}{offline}"
        )
        typer.echo(f"  bundle sha256 {bundle.sha256}")
        typer.echo(f"  manifest sha256 {bundle.manifest_sha256}")
        typer.echo(f"  secrets (0600): {', '.join(bundle.secrets)}")
        if out is not None:
            # docs/flash.md "Installing a bundle by hand": the check that does not come from the bundle.
            check = shlex.join(["echo", f"{bundle.sha256}  {bundle.path.name}"])
            typer.echo(f"  on the device, before unpacking it: {check} | sha256sum -c")
        if not bundle.claim:
            typer.echo(
                f"  note: {options.device} has enrolled already: no claim token; a fresh install (new key) "
                "needs the device re-enrolled",
                err=True,
            )
        if target is not None:
            steps = ssh_steps(
                target,
                bundle,
                options=ssh_options,
                identity=identity,
                remote_prefix=remote_prefix,
                remote_tmp=remote_tmp,
            )
            if dry_run:
                for s in steps:
                    typer.echo(("# if a step fails: " if s.on_failure else "") + shlex.join(s.argv))
                return bundle
            typer.echo(f"installing on {target.destination} (port {target.port or 22}) ...")
            install_over_ssh(target, steps, runner, bundle=bundle)
            typer.echo(f"installed {options.device} on {target.host}")
        if plan is not None:
            if dry_run:
                typer.echo(
                    f"would write {plan.bundle} and {plan.user_data}"
                    + (f" and {plan.meta_data}" if plan.meta_data else "")
                )
                return bundle
            write_boot(plan, bundle, options.device)
            typer.echo(f"wrote {plan.bundle} and the first-boot hook {plan.user_data}")
            if plan.meta_data is not None:
                typer.echo(f"wrote {plan.meta_data} (cloud-init NoCloud needs one)")
    return bundle


def flash_cmd(
    name: Annotated[str, typer.Argument(help="The device to flash (see `fleet device list`).")],
    *,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Write the bundle to this .tar.gz file.")
    ] = None,
    platform_: Annotated[
        str,
        typer.Option(
            "--platform",
            help="Which machines the wheels are for: host, linux-aarch64 or linux-x86_64 (64-bit only).",
        ),
    ] = flash.Arch.HOST.value,
    python: Annotated[
        str,
        typer.Option(
            "--python", help="Target Python (with --platform linux-*): 3.11 is Raspberry Pi OS bookworm's."
        ),
    ] = "3.11",
    glibc: Annotated[
        str,
        typer.Option("--glibc", help="Target glibc (with --platform linux-*): wheels up to manylinux_2_N."),
    ] = f"{flash.DEFAULT_GLIBC[0]}.{flash.DEFAULT_GLIBC[1]}",
    offline: Annotated[
        bool, typer.Option("--offline", help="Include every dependency's wheel: install without network.")
    ] = False,
    runtime: Annotated[
        flash.Runtime, typer.Option("--runtime", help="TFLite runtime for the device.")
    ] = flash.Runtime.AI_EDGE_LITERT,
    serial_port: Annotated[
        str, typer.Option("--serial-port", help="The sensor's serial device on the device.")
    ] = flash.DEFAULT_SERIAL_PORT,
    baud: Annotated[int, typer.Option("--baud", help="Its baud rate.")] = flash.DEFAULT_BAUD,
    broker_host: Annotated[
        str | None,
        typer.Option("--broker-host", help="Broker host the device connects to (default: fleet.toml)."),
    ] = None,
    broker_port: Annotated[
        int | None, typer.Option("--broker-port", help="Broker TLS port (default: fleet.toml).")
    ] = None,
    wheel: Annotated[
        Path | None, typer.Option("--wheel", help="Use this edgeseal wheel instead of building one.")
    ] = None,
    ssh: Annotated[
        str | None, typer.Option("--ssh", help="Install on USER@HOST[:PORT] with the system ssh/scp.")
    ] = None,
    ssh_option: Annotated[
        list[str] | None, typer.Option("--ssh-option", "-o", help="Extra ssh -o option, repeatable.")
    ] = None,
    identity: Annotated[Path | None, typer.Option("--identity", "-i", help="ssh private key file.")] = None,
    remote_prefix: Annotated[
        str | None,
        typer.Option("--remote-prefix", help="With --ssh: install unprivileged under this remote directory."),
    ] = None,
    remote_tmp: Annotated[
        str,
        typer.Option(
            "--remote-tmp",
            help="With --ssh: directory on the device the bundle is unpacked in (a private subdirectory,"
            " removed after). Use /var/tmp when /tmp is a small tmpfs.",
        ),
    ] = DEFAULT_REMOTE_TMP,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build the bundle, print what would run.")
    ] = False,
    boot: Annotated[
        Path | None,
        typer.Option("--boot", help="Write bundle + cloud-init hook to this mounted boot partition."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --boot: replace an existing user-data.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Build a device's provisioning bundle; install it over SSH or onto a Raspberry Pi boot partition."""
    target = flash.Target(
        arch=flash.parse_arch(platform_),
        python=flash.parse_version(python, "python"),
        glibc=flash.parse_version(glibc, "glibc"),
    )
    fleet = FleetHome.load(home)
    options = BundleOptions(
        device=name,
        target=target,
        offline=offline,
        runtime=runtime,
        serial_port=serial_port,
        baud=baud,
        broker_host=broker_host,
        broker_port=broker_port,
        wheel=wheel,
    )
    flash_device(
        home=fleet,
        options=options,
        out=bundle,
        ssh=ssh,
        ssh_options=tuple(ssh_option or ()),
        identity=identity,
        remote_prefix=remote_prefix,
        remote_tmp=remote_tmp,
        boot=boot,
        force=force,
        dry_run=dry_run,
    )
