"""``fleet flash`` end to end: an offline bundle for this host installs into a prefix with the package
index unreachable, the installed agent enrols through its claim against the hardened broker (TLS +
passwords) and its results verify in a collector; tampering is refused; the SSH path runs against a
real sshd on a loopback port, with scp in either mode, and refuses a bundle changed after it was
built; the by-hand check of docs/flash.md refuses one too; an aarch64 offline bundle carries aarch64
wheels; --boot writes the bundle and a cloud-init hook.

One offline bundle is built per module and reused; the figures (bundle sizes, install time, time to
the first verified result) are printed (``pytest -s``) and quoted in docs/flash.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker_config.runner import MosquittoProcess, free_port
from edge_protocol.keys import read_private_key
from fleet_cli.app import main as fleet_main
from fleet_cli.broker import render_broker
from fleet_cli.collector.config import CollectorConfig
from fleet_cli.collector.service import Collector
from fleet_cli.commands.flash import flash_device
from fleet_cli.flash import check_wheel_tags, render_sha256sums, wheel_tags
from fleet_cli.flash.build import BundleOptions
from fleet_cli.flash.ssh import BundleMismatch, Step, run_step
from fleet_cli.home import FleetHome, init_fleet
from fleet_cli.registry import Registry
from tests.broker_config._support import reachable
from tests.fleet_cli._collect_sim import unique_fleet

pytestmark = pytest.mark.integration

DEVICE = "dev-01"
TOP = f"edgeseal-{DEVICE}"
# The package index and any proxy point at the discard port: a download attempt fails at once.
NO_NETWORK = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_CONFIG_FILE": os.devnull,
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
}
FIRST_RESULT_TIMEOUT_S = 60.0
FIGURES: dict[str, float] = {}
ROOT = Path(__file__).resolve().parents[3]
# A public key whose private half the attacker holds.
ATTACKER_KEY = "ee" * 32


def _flash(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """``fleet flash`` in a subprocess (its own stdout/stderr, as an operator runs it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fleet_cli", "flash", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    return proc.returncode, proc.stdout, proc.stderr


def _error(stderr: str) -> str:
    """The one ``error:`` line (notes may come before it)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@dataclass(frozen=True)
class Built:
    home: FleetHome
    bundle: Path
    wheel: Path  # the edgeseal wheel of that bundle, reused by later builds
    simulator_link: Path
    build_s: float
    stdout: str  # what `fleet flash` printed


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = reachable(tmp_path_factory.mktemp("flash"))
    home = init_fleet(tmp / "home", unique_fleet("f"), tls_port=free_port(), plain_port=0)
    home.config_path.write_text(
        home.config_path.read_text().replace('tls_bind = ""', 'tls_bind = "127.0.0.1"')
    )
    home = FleetHome.load(home.root)
    with Registry(home.registry_db) as reg:
        reg.add_device(DEVICE)
    link = tmp / "tty-dev-01"
    bundle = tmp / "dev-01-host-offline.tar.gz"
    t0 = time.monotonic()
    code, out, err = _flash(
        DEVICE, "--home", str(home.root), "--bundle", str(bundle), "--offline",
        "--serial-port", str(link), "--baud", "921600",
    )  # fmt: skip
    build_s = time.monotonic() - t0
    assert code == 0, err
    assert "manifest sha256" in out
    wheel = tmp / "wheel"
    wheel.mkdir()
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith(f"{TOP}/wheels/edgeseal-"))
        data = tar.extractfile(member)
        assert data is not None
        (wheel / Path(member.name).name).write_bytes(data.read())
    FIGURES["bundle_host_offline_mib"] = bundle.stat().st_size / 2**20
    FIGURES["build_host_offline_s"] = build_s
    return Built(home, bundle, next(wheel.iterdir()), link, build_s, out)


def _unpack(bundle: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(bundle), "-C", str(into)], check=True)
    return into / TOP


def _install(
    bundle_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(bundle_dir / "install.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **NO_NETWORK, **(env or {})},
        timeout=300,
        check=False,
    )


def _manifest(bundle_dir: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((bundle_dir / "MANIFEST.json").read_text())
    return doc


@contextlib.contextmanager
def _broker(home: FleetHome) -> Iterator[MosquittoProcess]:
    s = render_broker(home).settings
    proc = MosquittoProcess(s.paths.conf, s.tls_port, log=s.paths.directory / "test.log").start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def _collector(home: FleetHome, store: Path) -> Iterator[Collector]:
    with Registry(home.registry_db) as reg:
        creds = reg.user_credentials(home.config.collector_user)
        config = CollectorConfig(
            fleet=home.fleet,
            store_path=store,
            host="localhost",
            port=home.config.broker.tls_port,
            username=creds.username,
            password=creds.password,
            tls_ca=home.ca_cert,
            client_id="flash-test-collector",
            batch_max_delay_s=0.05,
            ack_interval_s=0.5,
        )
        c = Collector(config, reg, read_private_key(home.collector_key))
        c.start()
        try:
            yield c
        finally:
            c.stop()


def test_offline_bundle_installs_without_network_and_the_agent_enrols_and_verifies(
    built: Built, tmp_path: Path
) -> None:
    from firmware_bridge.sim.simulator import Simulator

    bundle_dir = _unpack(built.bundle, tmp_path / "unpacked")
    manifest = _manifest(bundle_dir)
    assert manifest["offline"] is True
    files = {e["path"]: e for e in manifest["files"]}  # type: ignore[attr-defined]
    assert {p for p, e in files.items() if e["secret"]} == {"config/mqtt.pass", "config/claim.token"}
    assert all(e["mode"] == "0600" for e in files.values() if e["secret"])
    for p, e in files.items():
        assert (bundle_dir / p).stat().st_mode & 0o777 == int(e["mode"], 8)
    prefix = tmp_path / "root"
    t0 = time.monotonic()
    done = _install(bundle_dir, "--prefix", str(prefix), "--no-systemd")
    install_s = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    FIGURES["install_s"] = install_s
    log = done.stdout + done.stderr
    # nothing was fetched: pip had no index but the bundle, and never tried the network
    assert "from the bundled wheels (no network)" in log
    assert "Downloading" not in log
    assert "127.0.0.1:9" not in log
    assert "Retrying" not in log
    assert "BLAKE3" in log
    etc = prefix / "etc" / "edgeseal"
    assert (etc / "mqtt.pass").stat().st_mode & 0o777 == 0o600
    assert (etc / "claim.token").stat().st_mode & 0o777 == 0o600
    state = prefix / "var" / "lib" / "edgeseal"
    assert state.stat().st_mode & 0o777 == 0o700
    assert f'state_dir = "{state}"' in (etc / "agent.toml").read_text()
    agent_bin = prefix / "opt" / "edgeseal" / "venv" / "bin" / "edge-agent"
    # only the agent's dependencies went into the venv, not the operator's
    venv_python = prefix / "opt" / "edgeseal" / "venv" / "bin" / "python"
    probe = subprocess.run(
        [str(venv_python), "-c", "import importlib.util as u; print([m for m in "
         "('typer', 'rich', 'amqtt', 'nacl', 'ai_edge_litert') if u.find_spec(m)])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "['nacl', 'ai_edge_litert']"

    home = built.home
    sim = Simulator(profile="vibration", hz=400.0, protocol="frames", link=built.simulator_link, seed=3)
    sim.start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        with _broker(home), _collector(home, tmp_path / "store.sqlite") as collector:
            t_start = time.monotonic()
            agent_log = (tmp_path / "agent.log").open("wb")
            agent = subprocess.Popen(
                [str(agent_bin), "run", "--config", str(etc / "agent.toml")],
                stdout=agent_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **NO_NETWORK},
            )
            first = None
            deadline = time.monotonic() + FIRST_RESULT_TIMEOUT_S
            while time.monotonic() < deadline:
                snap = collector.snapshot()
                if first is None and sum(snap.labels_by_device.get(DEVICE, {}).values()) > 0:
                    first = time.monotonic() - t_start
                if first is not None and snap.accepted >= 5:
                    break
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
                time.sleep(0.05)
            assert first is not None, (tmp_path / "agent.log").read_text()
            FIGURES["first_verified_result_s"] = first
            snap = collector.snapshot()
            assert snap.rejected == {}, snap.rejected
            assert snap.labels_by_device[DEVICE]
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=15) == 0
            agent_log.close()
        with Registry(home.registry_db) as reg:
            # enrolled through the claim: the key is bound, the token retired
            assert reg.device_key(DEVICE) is not None
            assert reg.claim_token(DEVICE) is None
        key_file = state / "device.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key_before = key_file.read_bytes()

        # idempotent: installing again keeps the state (the device key) and succeeds
        again = _install(bundle_dir, "--prefix", str(prefix), "--no-systemd")
        assert again.returncode == 0, again.stdout + again.stderr
        assert key_file.read_bytes() == key_before
        # uninstall keeps the state unless --purge
        gone = _install(bundle_dir, "--prefix", str(prefix), "--uninstall")
        assert gone.returncode == 0, gone.stderr
        assert not (prefix / "opt" / "edgeseal").exists()
        assert not etc.exists()
        assert key_file.read_bytes() == key_before
        purged = _install(bundle_dir, "--prefix", str(prefix), "--uninstall", "--purge")
        assert purged.returncode == 0, purged.stderr
        assert not state.exists()
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        sim.stop()
    print(f"\nflash figures: {json.dumps({k: round(v, 2) for k, v in FIGURES.items()})}")


def _tamper_cases() -> list[str]:
    return [
        "flip a byte of the agent config",
        "flip a byte of a dependency wheel",
        "append to install.sh",
        "replace the edgeseal wheel",
        "add a file",
        "remove the claim token",
        "make a secret world-readable",
        "rewrite manifest and sums consistently (pinned)",
    ]


@pytest.mark.parametrize("case", _tamper_cases())
def test_a_tampered_bundle_is_refused_and_nothing_is_installed(
    built: Built, tmp_path: Path, case: str
) -> None:
    import hashlib

    bundle_dir = _unpack(built.bundle, tmp_path / "unpacked")
    pin = hashlib.sha256((bundle_dir / "MANIFEST.json").read_bytes()).hexdigest()
    args = ["--prefix", str(tmp_path / "root"), "--no-systemd"]

    def flip(p: Path, at: int = 100) -> None:
        data = bytearray(p.read_bytes())
        data[min(at, len(data) - 1)] ^= 0x01
        p.write_bytes(bytes(data))

    if case.startswith("flip a byte of the agent"):
        flip(bundle_dir / "config" / "agent.toml")
    elif case.startswith("flip a byte of a dependency"):
        flip(next((bundle_dir / "wheels").glob("paho_mqtt-*.whl")), 5000)
    elif case.startswith("append"):
        with (bundle_dir / "install.sh").open("a") as f:
            f.write("\necho pwned\n")
    elif case.startswith("replace the edgeseal"):
        wheel = next((bundle_dir / "wheels").glob("edgeseal-*.whl"))
        wheel.write_bytes(wheel.read_bytes()[:-10] + b"0123456789")
    elif case.startswith("add"):
        (bundle_dir / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + bytes(18))
    elif case.startswith("remove"):
        (bundle_dir / "config" / "claim.token").unlink()
    elif case.startswith("make a secret"):
        (bundle_dir / "config" / "mqtt.pass").chmod(0o644)
    else:
        # An attacker who rewrites the file, the manifest and SHA256SUMS together is caught by the pin.
        from fleet_cli.flash import render_sha256sums

        toml = bundle_dir / "config" / "agent.toml"
        toml.write_text(toml.read_text().replace('delivery = "fleet-ack"', 'delivery = "broker-ack"'))
        doc = _manifest(bundle_dir)
        import blake3

        for e in doc["files"]:  # type: ignore[attr-defined]
            if e["path"] == "config/agent.toml":
                data = toml.read_bytes()
                e.update(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                         blake3=blake3.blake3(data).hexdigest())  # fmt: skip
        raw = (json.dumps(doc, indent=2) + "\n").encode()
        (bundle_dir / "MANIFEST.json").write_bytes(raw)
        (bundle_dir / "SHA256SUMS").write_bytes(render_sha256sums(raw))
        # unpinned, the consistent rewrite passes verification (no secret to sign with on the device) ...
        check = subprocess.run(
            [sys.executable, str(bundle_dir / "verify.py"), "--bundle", str(bundle_dir)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        args += ["--manifest-sha256", pin]  # ... the operator's pin is what stops it
    done = _install(bundle_dir, *args)
    assert done.returncode != 0, done.stdout
    assert "nothing installed" in done.stderr or "refused" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    root = tmp_path / "root"
    assert not (root / "opt").exists()
    assert not (root / "etc").exists()
    assert not (root / "var").exists()


def test_the_manifest_covers_every_file_of_the_bundle(built: Built) -> None:
    with tarfile.open(built.bundle) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile()}
        raw = tar.extractfile(f"{TOP}/MANIFEST.json").read()  # type: ignore[union-attr]
        sums = tar.extractfile(f"{TOP}/SHA256SUMS").read()  # type: ignore[union-attr]
    listed = {e["path"] for e in json.loads(raw)["files"]}
    assert listed == set(members) - {"MANIFEST.json", "SHA256SUMS"}
    assert {"install.sh", "verify.py", "config/agent.toml", "config/operator.pub"} <= listed
    assert sums == render_sha256sums(raw)  # derived from the manifest, line for line
    # and the bundle SHA-256 fleet flash printed covers the whole tarball
    assert f"bundle sha256 {hashlib.sha256(built.bundle.read_bytes()).hexdigest()}" in built.stdout


# -- a bundle changed on purpose (docs/flash.md "Tampering") ---------------------------------------

TAMPERINGS = ["verify.py, operator key, SHA256SUMS", "install.sh"]


def _tamper(bundle_dir: Path, how: str, marker: Path) -> None:
    """Change an unpacked bundle as an attacker would: ``marker`` appears if any of their code runs."""
    if how.startswith("verify.py"):
        # A verifier that checks nothing, the attacker's key as the operator's, SHA256SUMS to match.
        (bundle_dir / "verify.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nprint('verify.py: all files match the manifest')\n"
        )
        operator = (bundle_dir / "config" / "operator.pub").read_text().strip()
        toml = bundle_dir / "config" / "agent.toml"
        assert operator in toml.read_text()
        toml.write_text(toml.read_text().replace(operator, ATTACKER_KEY))
        (bundle_dir / "config" / "operator.pub").write_text(ATTACKER_KEY + "\n")
    else:
        (bundle_dir / "install.sh").write_text(f"#!/bin/sh\ntouch {marker}\n")
    lines = (bundle_dir / "SHA256SUMS").read_text().splitlines()
    paths = [ln.split("  ", 1)[1] for ln in lines]
    (bundle_dir / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256((bundle_dir / p).read_bytes()).hexdigest()}  {p}\n" for p in paths)
    )
    # the bundle's own checks are satisfied: only a check from outside it can tell
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=bundle_dir, check=False
    )
    assert check.returncode == 0


def _tamper_archive(archive: Path, how: str, marker: Path, scratch: Path) -> None:
    """Unpack ``archive``, tamper with it, pack it again in its place."""
    bundle_dir = _unpack(archive, scratch)
    _tamper(bundle_dir, how, marker)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle_dir, arcname=TOP)


@pytest.mark.parametrize("how", TAMPERINGS)
def test_ssh_refuses_a_bundle_changed_after_it_was_built(
    built: Built, sshd: Sshd, tmp_path: Path, how: str
) -> None:
    marker = tmp_path / "attacker-code-ran"
    remote = tmp_path / "remote-root"
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    copied: list[str] = []

    def tamper_in_transit(step: Step) -> tuple[int, str]:
        if step.name == "copy":
            bundle = Path(step.argv[-2])
            copied.append(hashlib.sha256(bundle.read_bytes()).hexdigest())
            _tamper_archive(bundle, how, marker, tmp_path / "scratch")
        return run_step(step)

    ssh = _ssh_args(sshd)
    with pytest.raises(BundleMismatch) as refused:
        flash_device(
            home=built.home,
            options=BundleOptions(DEVICE, wheel=built.wheel),
            out=None,
            ssh=ssh[1],
            identity=Path(ssh[3]),
            ssh_options=(ssh[5], ssh[7]),
            remote_prefix=str(remote),
            remote_tmp=str(remote_tmp),
            runner=tamper_in_transit,
        )
    msg = str(refused.value)
    assert "\n" not in msg
    assert msg.startswith("refused: the bundle on 127.0.0.1 is not the one fleet flash built ("), msg
    assert msg.endswith("nothing of it was unpacked or run"), msg
    if how == "install.sh":
        assert "install.sh changed" in msg
    else:
        for path in ("SHA256SUMS", "config/agent.toml", "config/operator.pub", "verify.py"):
            assert f"{path} changed" in msg
    assert not marker.exists()  # nothing of the attacker's ran
    assert not remote.exists()  # nothing was installed
    assert list(remote_tmp.iterdir()) == []  # and the private directory is gone
    assert copied  # the tampering happened between the build and the copy


def _hand_check() -> str:
    """The by-hand install of docs/flash.md, exactly as documented."""
    text = (ROOT / "docs" / "flash.md").read_text(encoding="utf-8")
    section = text.split("### Installing a bundle by hand\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("how", [None, *TAMPERINGS])
def test_the_documented_check_by_hand_refuses_a_tampered_bundle(
    built: Built, tmp_path: Path, how: str | None
) -> None:
    printed = built.stdout.split("bundle sha256 ", 1)[1].split()[0]
    device = tmp_path / "device"
    device.mkdir()
    archive = device / "dev-01.tar.gz"  # the name the documented commands use
    shutil.copyfile(built.bundle, archive)
    marker = tmp_path / "attacker-code-ran"
    if how is not None:
        _tamper_archive(archive, how, marker, tmp_path / "scratch")
    # sudo records what it was asked to run instead of running it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "sudo-ran"
    (bin_dir / "sudo").write_text(f'#!/bin/sh\nprintf "%s\\n" "$PWD" "$*" > {ran}\n')
    (bin_dir / "sudo").chmod(0o755)
    commands = _hand_check()
    assert "<bundle sha256>" in commands
    done = subprocess.run(
        ["sh", "-c", commands.replace("<bundle sha256>", printed)],
        cwd=device,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    unpacked = device / "edgeseal-install" / TOP
    if how is None:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "dev-01.tar.gz: OK" in done.stdout
        assert ran.read_text().splitlines() == [str(device / "edgeseal-install"), f"sh {TOP}/install.sh"]
        assert (unpacked / "install.sh").is_file()
        return
    assert done.returncode != 0
    assert "dev-01.tar.gz: FAILED" in done.stdout
    assert not ran.exists()  # the installer was never started
    assert not unpacked.exists()  # nothing was unpacked
    assert not marker.exists()


def test_a_system_install_needs_root_and_options_are_checked(built: Built, tmp_path: Path) -> None:
    bundle_dir = _unpack(built.bundle, tmp_path / "unpacked")
    bad = _install(bundle_dir, "--frobnicate")
    assert bad.returncode != 0
    assert "unknown option --frobnicate" in bad.stderr
    purge = _install(bundle_dir, "--purge")
    assert purge.returncode != 0
    assert "--purge only goes with --uninstall" in purge.stderr
    if os.geteuid() != 0:
        done = _install(bundle_dir)
        assert done.returncode != 0
        assert "needs root" in done.stderr


# -- aarch64 ------------------------------------------------------------------------------------------


def test_aarch64_offline_bundle_carries_aarch64_wheels_and_refuses_this_host(
    built: Built, tmp_path: Path
) -> None:
    out = tmp_path / "dev-01-aarch64.tar.gz"
    code, _stdout, err = _flash(
        DEVICE, "--home", str(built.home.root), "--bundle", str(out), "--offline",
        "--platform", "linux-aarch64", "--wheel", str(built.wheel),
    )  # fmt: skip
    assert code == 0, err
    FIGURES["bundle_aarch64_offline_mib"] = out.stat().st_size / 2**20
    bundle_dir = _unpack(out, tmp_path / "unpacked")
    manifest = _manifest(bundle_dir)
    target = manifest["target"]
    assert isinstance(target, dict)
    assert (target["platform"], target["machine"], target["python"], target["abi"]) == (
        "linux-aarch64", "aarch64", "3.11", "cp311",
    )  # fmt: skip
    wheels = sorted(p.name for p in (bundle_dir / "wheels").iterdir())
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"edgeseal", "paho_mqtt", "blake3", "pynacl", "cbor2", "pyserial", "cobs", "numpy"} <= names
    assert "ai_edge_litert" in names
    assert not names & {"typer", "rich", "cryptography", "amqtt", "prometheus_client"}
    compiled = [w for w in wheels if wheel_tags(w)[2] != "any"]
    assert compiled, wheels
    for w in compiled:
        plats = wheel_tags(w)[2].split(".")
        assert all(p.endswith("_aarch64") for p in plats), w
        assert wheel_tags(w)[0] in ("cp311", "cp38", "cp39", "cp310") or "abi3" in w, w
    check_wheel_tags(wheels, _aarch64_target())
    # The installer refuses it on this (x86_64) machine before installing anything.
    if os.uname().machine != "aarch64":
        done = _install(bundle_dir, "--prefix", str(tmp_path / "root"), "--no-systemd")
        assert done.returncode != 0
        assert "for aarch64 machines" in done.stderr
        assert not (tmp_path / "root" / "opt").exists()


def _aarch64_target() -> object:
    from fleet_cli.flash import Arch, Target

    return Target(arch=Arch.AARCH64)


def test_bundle_without_offline_is_small_and_has_only_the_edgeseal_wheel(
    built: Built, tmp_path: Path
) -> None:
    out = tmp_path / "online.tar.gz"
    code, _, err = _flash(
        DEVICE, "--home", str(built.home.root), "--bundle", str(out), "--wheel", str(built.wheel)
    )
    assert code == 0, err
    FIGURES["bundle_online_kib"] = out.stat().st_size / 1024
    with tarfile.open(out) as tar:
        wheels = [m.name for m in tar.getmembers() if "/wheels/" in m.name]
        modes = {m.name.split("/", 1)[-1]: m.mode for m in tar.getmembers()}
    assert len(wheels) == 1
    assert wheels[0].startswith(f"{TOP}/wheels/edgeseal-")
    assert modes["config/mqtt.pass"] == 0o600
    assert out.stat().st_mode & 0o777 == 0o600


# -- SSH ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path
    known_hosts: Path
    process: subprocess.Popen[bytes]


def _sshd_binary() -> str | None:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if found is None or shutil.which("ssh") is None or shutil.which("scp") is None:
        return None
    return found


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    binary = _sshd_binary()
    if binary is None:
        pytest.skip("OpenSSH server/client not installed (sh tools/ensure-sshd.sh installs them)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)], check=True
        )
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    host_pub = (d / "host.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    try:
        yield Sshd(port, d / "client", d / "known_hosts", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _ssh_args(sshd: Sshd, user: str = "") -> list[str]:
    user = (
        user
        or os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )
    return [
        "--ssh", f"{user}@127.0.0.1:{sshd.port}",
        "-i", str(sshd.key),
        "-o", f"UserKnownHostsFile={sshd.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
    ]  # fmt: skip


def test_ssh_install_into_a_remote_prefix_streams_the_installer(
    built: Built, sshd: Sshd, tmp_path: Path
) -> None:
    remote = tmp_path / "remote-root"
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    code, out, err = _flash(
        DEVICE, "--home", str(built.home.root), "--offline", "--wheel", str(built.wheel),
        "--remote-prefix", str(remote), "--remote-tmp", str(remote_tmp), *_ssh_args(sshd),
    )  # fmt: skip
    assert code == 0, out + err
    assert "installing from the bundled wheels (no network)" in out  # the installer's output, streamed
    assert f"installed {DEVICE} on 127.0.0.1" in out
    assert (remote / "etc" / "edgeseal" / "agent.toml").is_file()
    assert (remote / "etc" / "edgeseal" / "mqtt.pass").stat().st_mode & 0o777 == 0o600
    assert (remote / "opt" / "edgeseal" / "venv" / "bin" / "edge-agent").is_file()
    # the private directory on the remote side is gone
    assert list(remote_tmp.iterdir()) == []


def test_ssh_dry_run_prints_the_commands(built: Built, sshd: Sshd, tmp_path: Path) -> None:
    code, out, err = _flash(
        DEVICE, "--home", str(built.home.root), "--wheel", str(built.wheel), "--dry-run",
        "--remote-prefix", str(tmp_path / "never"), *_ssh_args(sshd),
    )  # fmt: skip
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith(("ssh ", "scp "))]
    assert len(lines) == 4
    assert all("BatchMode=yes" in ln and "ConnectTimeout=" in ln for ln in lines)
    assert f"-p {sshd.port}" in lines[0]
    assert f"-P {sshd.port}" in lines[1]
    assert lines[2].endswith("sha256sum bundle.tar.gz'")
    assert "install.sh --manifest-sha256" in lines[3]
    cleanup = [ln for ln in out.splitlines() if ln.startswith("# if a step fails: ssh ")]
    assert len(cleanup) == 1
    assert "rm -rf /tmp/edgeseal-flash-" in cleanup[0]
    assert not (tmp_path / "never").exists()
    assert " /tmp/edgeseal-flash-" in lines[0]  # the default --remote-tmp


def test_remote_tmp_is_checked(built: Built, sshd: Sshd, tmp_path: Path) -> None:
    base = [DEVICE, "--home", str(built.home.root), "--wheel", str(built.wheel)]
    code, out, err = _flash(*base, "--dry-run", "--remote-tmp", "/var/tmp/", *_ssh_args(sshd))
    assert code == 0, err
    assert "mkdir -m 700 /var/tmp/edgeseal-flash-" in out
    code, _, err = _flash(*base, "--dry-run", "--remote-tmp", "var/tmp", *_ssh_args(sshd))
    assert code == 2
    assert "--remote-tmp must be an absolute directory" in err
    code, _, err = _flash(*base, "--bundle", str(tmp_path / "b.tar.gz"), "--remote-tmp", "/var/tmp")
    assert code == 2
    assert "--remote-tmp only goes with --ssh" in err


def test_ssh_install_with_scp_in_legacy_mode(built: Built, sshd: Sshd, tmp_path: Path) -> None:
    # scp -O (the default of OpenSSH before 9.0) gives the destination path to the remote shell
    real_scp = shutil.which("scp")
    assert real_scp is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    used = tmp_path / "scp-used"
    (bin_dir / "scp").write_text(f'#!/bin/sh\necho "$*" >> {used}\nexec {real_scp} -O "$@"\n')
    (bin_dir / "scp").chmod(0o755)
    legacy = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    remote = tmp_path / "remote-root"
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    base = [DEVICE, "--home", str(built.home.root), "--wheel", str(built.wheel), *_ssh_args(sshd)]
    code, out, err = _flash(
        *base, "--offline", "--remote-prefix", str(remote), "--remote-tmp", str(remote_tmp), env=legacy
    )
    assert code == 0, out + err
    assert used.read_text().count("bundle.tar.gz") == 1
    assert f"installed {DEVICE} on 127.0.0.1" in out
    assert (remote / "etc" / "edgeseal" / "agent.toml").is_file()
    assert list(remote_tmp.iterdir()) == []
    # a directory the remote shell would split or expand is refused before anything is built
    spaced = tmp_path / "remote tmp"
    spaced.mkdir()
    code, _, err = _flash(*base, "--remote-tmp", str(spaced), env=legacy)
    assert code == 2
    assert "--remote-tmp must be an absolute directory" in _error(err)
    assert used.read_text().count("bundle.tar.gz") == 1


def test_ssh_errors_are_one_line(built: Built, sshd: Sshd, tmp_path: Path) -> None:
    base = [DEVICE, "--home", str(built.home.root), "--wheel", str(built.wheel)]
    # nobody listens on this port
    closed = free_port()
    code, _, err = _flash(*base, "--ssh", f"root@127.0.0.1:{closed}", "-o", "StrictHostKeyChecking=no")
    assert code == 1
    assert _error(err).startswith(f"error: cannot reach 127.0.0.1:{closed}"), err
    assert "Traceback" not in err
    # a key the server does not know
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    args = _ssh_args(sshd)
    args[args.index("-i") + 1] = str(stranger)
    code, _, err = _flash(*base, *args)
    assert code == 1
    assert "error: authentication to" in err, err
    assert "hint:" in err, err
    # an unknown host key with strict checking
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = _ssh_args(sshd)
    args[args.index(f"UserKnownHostsFile={sshd.known_hosts}")] = f"UserKnownHostsFile={empty}"
    code, _, err = _flash(*base, *args)
    assert code == 1
    assert "host key" in _error(err), err
    # a failing installer: the remote prefix is a file
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = _flash(*base, "--remote-prefix", str(blocker / "sub"), *_ssh_args(sshd))
    assert code == 1
    assert "error: the installer failed on 127.0.0.1 (exit status" in err, out + err


# -- boot partition -----------------------------------------------------------------------------------


def test_boot_writes_bundle_and_cloud_init_hook_and_never_overwrites_user_data(
    built: Built, tmp_path: Path
) -> None:
    import yaml

    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=x rootwait\n")
    base = [DEVICE, "--home", str(built.home.root), "--wheel", str(built.wheel)]
    code, _out, err = _flash(*base, "--boot", str(boot))
    assert code == 0, err
    bundle = boot / "edgeseal" / f"{DEVICE}.tar.gz"
    assert bundle.is_file()
    doc = yaml.safe_load((boot / "user-data").read_text())
    assert (boot / "user-data").read_text().startswith("#cloud-config\n")
    (cmd,) = doc["runcmd"]
    assert cmd[:2] == ["sh", "-c"]
    script = cmd[2]
    assert "/boot/firmware /boot" in script
    assert f'{TOP}/install.sh" --manifest-sha256' in script
    assert 'rm -f "$B"' in script  # the secrets leave the FAT partition once installed
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    pin = script.split("--manifest-sha256 ")[1].split(";")[0]
    with tarfile.open(bundle) as tar:
        member = tar.extractfile(f"{TOP}/MANIFEST.json")
        assert member is not None
        import hashlib

        assert hashlib.sha256(member.read()).hexdigest() == pin
    assert (boot / "meta-data").read_text().startswith("instance-id: edgeseal-dev-01-")
    # existing user-data: refused, untouched
    (boot / "user-data").write_text("#cloud-config\nusers: []\n")
    (boot / "meta-data").write_text("instance-id: imager\n")
    code, _, err = _flash(*base, "--boot", str(boot))
    assert code == 2
    assert _error(err).startswith(f"error: {boot / 'user-data'} exists already"), err
    assert "hint: --force" in err
    assert (boot / "user-data").read_text() == "#cloud-config\nusers: []\n"
    code, _, err = _flash(*base, "--boot", str(boot), "--force")
    assert code == 0, err
    assert "runcmd" in (boot / "user-data").read_text()
    assert (boot / "meta-data").read_text() == "instance-id: imager\n"  # never overwritten
    # not a boot partition
    other = tmp_path / "empty"
    other.mkdir()
    code, _, err = _flash(*base, "--boot", str(other))
    assert code == 2
    assert "does not look like a Raspberry Pi boot partition" in err


def test_cli_usage_errors(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(built.home.root)]
    assert fleet_main(["flash", DEVICE, *home]) == 2
    assert "say where the bundle goes" in capsys.readouterr().err
    assert (
        fleet_main(["flash", "nope", *home, "--bundle", str(tmp_path / "x.tgz"), "--wheel", str(built.wheel)])
        == 1
    )
    assert "no device named 'nope'" in capsys.readouterr().err
    assert fleet_main(["flash", DEVICE, *home, "--ssh", "no-user-here", "--wheel", str(built.wheel)]) == 2
    assert "USER@HOST[:PORT]" in capsys.readouterr().err
    assert (
        fleet_main(["flash", DEVICE, *home, "--bundle", str(tmp_path / "x.tgz"), "--wheel", str(tmp_path)])
        == 2
    )
    assert "is not an edgeseal wheel" in capsys.readouterr().err
    bad_py = ["--platform", "linux-aarch64", "--python", "3.9", "--bundle", str(tmp_path / "y.tgz")]
    assert fleet_main(["flash", DEVICE, *home, *bad_py]) == 2
    assert "too old" in capsys.readouterr().err
