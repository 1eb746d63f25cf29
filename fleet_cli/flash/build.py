"""Building a device's bundle (docs/flash.md): the edgeseal wheel from the source tree, the dependency
wheels for the target with ``pip download``, the files of :mod:`fleet_cli.flash.bundle`, the tarball.
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
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_protocol.keys import read_private_key
from fleet_cli import flash, shipped_model
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import FleetHome
from fleet_cli.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

DISTRIBUTION = "edgeseal"

# The wheel build and pip download run unattended; 15 minutes covers a slow mirror and a ~60 MB set.
PIP_TIMEOUT_S = 900


class BundleError(FleetError):
    """The bundle cannot be built (source tree, wheel build, pip download, output file)."""


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
    candidates.append(Path(__file__).resolve().parents[2])
    for root in candidates:
        try:
            meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if (
            meta.get("project", {}).get("name") == DISTRIBUTION
            and (root / "fleet_cli" / "flash" / "bundle.py").is_file()
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
