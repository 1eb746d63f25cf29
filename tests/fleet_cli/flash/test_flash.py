"""The pure parts of ``fleet flash``: requirements, targets and wheel tags, the rendered agent config,
unit, user-data and manifest, the tar writer, the verifier's limit, SSH commands and their errors."""

from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from edge_agent.config import parse_config
from fleet_cli import flash
from fleet_cli.errors import UsageError
from fleet_cli.flash import (
    AGENT_DEPENDENCIES,
    MAX_MANIFEST_BYTES,
    AgentSettings,
    Arch,
    BundleFile,
    Runtime,
    Target,
    agent_requirements,
    check_wheel_tags,
    render_agent_config,
    render_manifest,
    render_sha256sums,
    render_unit,
    render_user_data,
)
from fleet_cli.flash.boot import plan_boot
from fleet_cli.flash.build import Bundle, source_tree
from fleet_cli.flash.ssh import (
    BundleMismatch,
    RemoteError,
    SshTarget,
    Step,
    check_remote_tmp,
    explain_ssh_failure,
    install_over_ssh,
    parse_ssh_target,
    ssh_steps,
)

ROOT = Path(__file__).resolve().parents[3]
# Import names of the agent's third-party dependencies -> their distribution names.
IMPORT_TO_DIST = {
    "paho": "paho-mqtt",
    "nacl": "pynacl",
    "serial": "pyserial",
    "blake3": "blake3",
    "cbor2": "cbor2",
    "cobs": "cobs",
    "numpy": "numpy",
    "tomli": "tomli",
}
RUNTIMES = {"ai_edge_litert", "tflite_runtime"}
OUR_PACKAGES = {"edge_agent", "firmware_bridge", "edge_protocol"}


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_agent_dependencies_are_exactly_what_the_device_packages_import() -> None:
    third_party = set()
    for package in OUR_PACKAGES:
        third_party |= _imports(package) - set(sys.stdlib_module_names) - OUR_PACKAGES - {"__future__"}
    # importlib.util.find_spec strings are not imports: the runtimes are loaded by name
    third_party -= RUNTIMES
    assert third_party <= set(IMPORT_TO_DIST), third_party - set(IMPORT_TO_DIST)
    assert {IMPORT_TO_DIST[m] for m in third_party} | {"tomli"} == AGENT_DEPENDENCIES


def test_agent_requirements_from_the_installed_metadata() -> None:
    reqs = agent_requirements(importlib.metadata.requires("edgeseal") or [], Runtime.AI_EDGE_LITERT)
    names = {flash.requirement_name(r) for r in reqs}
    assert names == AGENT_DEPENDENCIES | {"ai-edge-litert"}
    assert any(r.startswith("tomli") and 'python_version < "3.11"' in r for r in reqs)  # the marker stays
    assert not any("extra" in r for r in reqs)
    tfl = agent_requirements(importlib.metadata.requires("edgeseal") or [], Runtime.TFLITE_RUNTIME)
    assert "tflite-runtime==2.14.*" in tfl
    assert "numpy<2" in tfl
    assert "ai-edge-litert" not in {flash.requirement_name(r) for r in tfl}
    with pytest.raises(UsageError, match="agent's dependencies"):
        agent_requirements(["typer>=0.12"], Runtime.AI_EDGE_LITERT)
    with pytest.raises(UsageError, match="'agent' extra"):
        agent_requirements(["paho-mqtt>=2", "PyNaCl", "blake3", "cbor2"], Runtime.AI_EDGE_LITERT)


def test_target_platform_tags_and_pip_arguments() -> None:
    assert Target().pip_download_args() == ["--only-binary=:all:"]
    t = Target(arch=Arch.AARCH64, python=(3, 11), glibc=(2, 36))
    tags = t.platform_tags()
    assert tags[0] == "manylinux2014_aarch64"
    assert tags[1] == "manylinux_2_17_aarch64"
    assert tags[-1] == "manylinux_2_36_aarch64"
    args = t.pip_download_args()
    assert args[:3] == ["--only-binary=:all:", "--platform", "manylinux2014_aarch64"]
    assert args[-6:] == ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    assert Target(arch=Arch.X86_64).platform_tags()[-1] == "manylinux_2_35_x86_64"
    with pytest.raises(UsageError, match="too old"):
        Target(arch=Arch.AARCH64, python=(3, 9))
    with pytest.raises(UsageError, match="older than manylinux2014"):
        Target(arch=Arch.AARCH64, glibc=(2, flash.MIN_GLIBC_MINOR - 1))
    assert flash.parse_version("3.12", "python") == (3, 12)
    assert flash.parse_version("2.36", "glibc") == (2, 36)
    for bad, what in (("3", "python"), ("py3.11", "python"), ("2.x", "glibc"), ("3.11", "glibc")):
        with pytest.raises(UsageError):
            flash.parse_version(bad, what)


def test_platform_names_and_the_32_bit_arm_refusal() -> None:
    assert [flash.parse_arch(a.value) for a in Arch] == list(Arch)
    assert flash.parse_arch(" Linux-AArch64 ") is Arch.AARCH64
    for arm32 in ("linux-armv7l", "linux_armv7l", "armv6l", "linux-armhf"):
        with pytest.raises(
            UsageError, match=r"^32-bit ARM has no TFLite runtime wheel; use a 64-bit OS \(aarch64\)$"
        ):
            flash.parse_arch(arm32)
    with pytest.raises(
        UsageError, match="--platform must be one of host, linux-aarch64, linux-x86_64, not 'sparc'"
    ):
        flash.parse_arch("sparc")


def test_flash_refuses_32_bit_arm_before_reading_the_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleet_cli.app import main

    code = main(["flash", "dev-01", "--platform", "linux-armv7l", "--home", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: 32-bit ARM has no TFLite runtime wheel; use a 64-bit OS (aarch64)\n"), err
    assert "hint: " in err


def test_wheel_tags_are_checked_against_the_target() -> None:
    t = Target(arch=Arch.AARCH64, python=(3, 11), glibc=(2, 35))
    check_wheel_tags(
        [
            "paho_mqtt-2.2.0-py3-none-any.whl",
            "pyserial-3.5-py2.py3-none-any.whl",
            "pynacl-1.6.2-cp38-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
            "numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
        ],
        t,
    )
    for bad in (
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl",  # another machine
        "numpy-2.4.6-cp312-cp312-manylinux_2_27_aarch64.whl",  # another Python
        "numpy-2.4.6-cp311-cp311-manylinux_2_39_aarch64.whl",  # a newer glibc than the target's
        "numpy-2.4.6-cp311-cp311-macosx_14_0_arm64.whl",
        "pynacl-1.6.2-cp312-abi3-manylinux2014_aarch64.whl",  # abi3 from 3.12 on
    ):
        with pytest.raises(UsageError):
            check_wheel_tags([bad], t)
    with pytest.raises(UsageError, match="not a wheel"):
        check_wheel_tags(["numpy-2.4.6.tar.gz"], t)


def _settings(**kw: object) -> AgentSettings:
    base: dict[str, object] = {
        "device": "dev-01",
        "fleet": "north",
        "broker_host": "broker.example",
        "broker_port": 8883,
        "operator_key": "11" * 32,
        "collector_keys": ("22" * 32,),
    }
    return AgentSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_agent_config_is_a_valid_edge_agent_config(tmp_path: Path) -> None:
    import tomllib

    path = tmp_path / "agent.toml"
    text = render_agent_config(_settings(serial_port="/dev/serial/by-id/usb-Arduino-if00", baud=921600))
    cfg = parse_config(tomllib.loads(text), path)
    assert (cfg.device.id, cfg.device.fleet, str(cfg.device.state_dir)) == (
        "dev-01",
        "north",
        "/var/lib/edgeseal",
    )
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("broker.example", 8883, "dev-01")
    assert cfg.mqtt.tls_ca == tmp_path / "ca.crt"
    assert cfg.mqtt.password_file == tmp_path / "mqtt.pass"
    assert cfg.claim_token_file == tmp_path / "claim.token"
    assert cfg.trust.operator_key == bytes.fromhex("11" * 32)
    assert cfg.trust.collector_keys == (bytes.fromhex("22" * 32),)
    assert cfg.trust.delivery.value == "fleet-ack"
    (p,) = cfg.pipelines
    assert p.source.port == "/dev/serial/by-id/usb-Arduino-if00"
    assert p.source.baud == 921600
    assert p.model.name == "vibration_int8.tflite"
    assert p.window == 128
    assert p.hop == 64
    # enrolled already: no [enrol] table
    enrolled = parse_config(tomllib.loads(render_agent_config(_settings(claim=False))), path)
    assert enrolled.claim_token_file is None


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_agent_config_is_flashs_rendering(tmp_path: Path, broker: str) -> None:
    """fleet demo's agent.toml comes from render_agent_config, with the model's facts read from its
    sidecar, absolute paths (escaped: a quote in a path stays a quote) and the demo's quick timers."""
    import tomllib

    from fleet_cli import shipped_model
    from fleet_cli.demo import run as demo

    models = shipped_model.models_dir()
    facts = shipped_model.read_facts(models)
    work = tmp_path / 'work "quoted"'
    mqtt: dict[str, object] = {"host": "127.0.0.1", "port": 1883, "protocol": "3.1.1"}
    if broker == "mosquitto":
        mqtt = {"host": "localhost", "port": 8883, "protocol": "auto", "tls_ca": str(work / "ca.crt"),
                "username": "dev-02", "password_file": str(work / "mqtt.pass")}  # fmt: skip
    script = demo.device_scripts(2, 30.0)[1]
    settings = demo._agent_settings(
        script, state_dir=work / "state", port_link=tmp_path / "tty-dev-02", models=models, facts=facts,
        mqtt=mqtt, operator_key="11" * 32, collector_key="22" * 32, claim_file=work / "claim.token",
    )  # fmt: skip
    text = render_agent_config(settings)
    assert text.startswith(
        "# edge_agent configuration of device dev-02 in fleet demo, written by `fleet demo`."
    )
    cfg = parse_config(tomllib.loads(text), tmp_path / "agent.toml")
    assert (cfg.device.id, cfg.device.fleet, cfg.device.state_dir) == ("dev-02", "demo", work / "state")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol.value) == (
        mqtt["host"],
        mqtt["port"],
        mqtt["protocol"],
    )
    assert (cfg.mqtt.resend_after_s, cfg.mqtt.backoff_min_s, cfg.mqtt.backoff_max_s) == (5.0, 0.2, 3.0)
    assert cfg.heartbeat_s == 5.0
    assert cfg.claim_token_file == work / "claim.token"
    if broker == "mosquitto":
        assert (cfg.mqtt.tls_ca, cfg.mqtt.username, cfg.mqtt.password_file) == (
            work / "ca.crt",
            "dev-02",
            work / "mqtt.pass",
        )
    else:
        assert (cfg.mqtt.tls_ca, cfg.mqtt.username, cfg.mqtt.password_file) == (None, None, None)
    (p,) = cfg.pipelines
    assert p.model == models / "vibration_int8.tflite"
    assert (p.source.port, p.source.baud) == (str(tmp_path / "tty-dev-02"), 921600)
    assert (tuple(p.channels), p.window, p.hop) == (facts.channels, facts.window, facts.hop)
    assert "labels = [" + ", ".join(f'"{x}"' for x in facts.labels) + "]" in text


def test_agent_settings_limits() -> None:
    with pytest.raises(UsageError, match="serial-port"):
        _settings(serial_port='/dev/tty"; rm -rf /')
    with pytest.raises(UsageError, match="--baud"):
        _settings(baud=12_000_001)  # edge_agent.config's bound on source.baud
    with pytest.raises(UsageError, match="--baud"):
        _settings(baud=0)


def test_unit_is_hardened_and_allows_only_the_serial_device(tmp_path: Path) -> None:
    text = render_unit("dev-01", "/dev/ttyACM0")
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "User=edgeseal",
        "SupplementaryGroups=dialout",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/edgeseal",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyACM rw",
        "ExecStart=/opt/edgeseal/venv/bin/edge-agent run --config /etc/edgeseal/agent.toml",
    ):
        assert line in text.splitlines(), line
    assert "PrivateDevices" not in text.replace("# PrivateDevices= stays off", "")
    assert flash.device_allow("/dev/ttyUSB1") == ["DeviceAllow=char-ttyUSB rw"]
    assert flash.device_allow("/dev/ttyAMA0") == ["DeviceAllow=char-ttyAMA rw"]
    assert flash.device_allow("/dev/ttyS0") == ["DeviceAllow=char-ttyS rw"]
    assert flash.device_allow("/dev/serial/by-id/x") == [
        "DeviceAllow=char-ttyACM rw",
        "DeviceAllow=char-ttyUSB rw",
    ]
    assert flash.device_allow("/dev/mysensor") == ["DeviceAllow=/dev/mysensor rw"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # systemd's own parser: no unknown or malformed directive (the ExecStart binary must exist for it)
    unit = tmp_path / "edgeseal-agent.service"
    unit.write_text(text.replace("/opt/edgeseal/venv/bin/edge-agent", "/bin/true"))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    problems = [ln for ln in (done.stdout + done.stderr).splitlines() if str(unit) in ln]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not problems, problems


def test_manifest_sums_and_file_rules() -> None:
    files = [
        BundleFile("install.sh", b"#!/bin/sh\n", flash.MODE_EXEC),
        BundleFile("config/mqtt.pass", b"pw\n", flash.MODE_SECRET, secret=True),
        BundleFile("config/agent.toml", b"[device]\n"),
    ]
    raw = render_manifest(files, {"device": "dev-01"})
    doc = json.loads(raw)
    assert doc["format"] == flash.BUNDLE_FORMAT
    assert doc["device"] == "dev-01"
    assert [e["path"] for e in doc["files"]] == ["config/agent.toml", "config/mqtt.pass", "install.sh"]
    secret = doc["files"][1]
    assert (secret["mode"], secret["size"], secret["secret"]) == ("0600", 3, True)
    assert len(secret["sha256"]) == len(secret["blake3"]) == 64
    assert render_sha256sums(raw).decode().splitlines()[2].endswith("  install.sh")
    with pytest.raises(ValueError, match="twice"):
        render_manifest([*files, files[0]], {})
    with pytest.raises(ValueError, match="not listed"):
        render_manifest([BundleFile("MANIFEST.json", b"")], {})
    for bad in ("/etc/passwd", "../x", "a//b", "a/./b", ""):
        with pytest.raises(ValueError, match="bad bundle path"):
            BundleFile(bad, b"")
    with pytest.raises(ValueError, match="0600"):
        BundleFile("config/claim.token", b"", flash.MODE_FILE, secret=True)


def test_tar_keeps_modes_and_root_ownership() -> None:
    buf = io.BytesIO()
    files = [
        BundleFile("config/claim.token", b"t", flash.MODE_SECRET, secret=True),
        BundleFile("install.sh", b"#!/bin/sh\n", flash.MODE_EXEC),
    ]
    flash.write_tar(buf, "edgeseal-dev-01", files, mtime=1_700_000_000)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["edgeseal-dev-01"].isdir()
    assert members["edgeseal-dev-01"].mode == 0o700
    assert members["edgeseal-dev-01/config"].mode == 0o700
    assert members["edgeseal-dev-01/config/claim.token"].mode == 0o600
    assert members["edgeseal-dev-01/install.sh"].mode == 0o755
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}


def _run_verify(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = bundle / "verify.py"
    script.write_text(flash.render_verifier())
    return subprocess.run(
        [sys.executable, str(script), "--bundle", str(bundle), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_verifier_refuses_a_manifest_over_its_limit(tmp_path: Path) -> None:
    assert "MAX_MANIFEST_BYTES = 4 * 1024 * 1024" in flash.render_verifier()
    assert MAX_MANIFEST_BYTES == 4 * 1024 * 1024
    (tmp_path / "MANIFEST.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    done = _run_verify(tmp_path)
    assert done.returncode == 1
    assert "larger than" in done.stderr


def test_verifier_accepts_a_good_bundle_and_checks_the_pin(tmp_path: Path) -> None:
    import hashlib

    files = [
        BundleFile("config/a.txt", b"hello\n"),
        BundleFile(flash.VERIFY_NAME, flash.render_verifier().encode()),
    ]
    raw = render_manifest(files, {"offline": False, "target": {"platform": "host"}})
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "a.txt").write_bytes(b"hello\n")
    (tmp_path / "MANIFEST.json").write_bytes(raw)
    (tmp_path / "SHA256SUMS").write_bytes(render_sha256sums(raw))
    ok = _run_verify(tmp_path, "--blake3", "require", "--manifest-sha256", hashlib.sha256(raw).hexdigest())
    assert ok.returncode == 0, ok.stderr
    assert "2 files match the manifest (SHA-256, BLAKE3)" in ok.stdout
    pinned = _run_verify(tmp_path, "--manifest-sha256", "00" * 32)
    assert pinned.returncode == 1
    assert "pinned" in pinned.stderr
    (tmp_path / "config" / "link").symlink_to("a.txt")
    linked = _run_verify(tmp_path)
    assert linked.returncode == 1
    assert "not a regular file" in linked.stderr


def _offline_bundle(root: Path, wheel: str) -> None:
    """A bundle of one wheel (its bytes do not matter here) for this machine and Python."""
    import platform

    files = [
        BundleFile(f"wheels/{wheel}", b"not really a wheel\n"),
        BundleFile(flash.VERIFY_NAME, flash.render_verifier().encode()),
    ]
    (root / "wheels").mkdir()
    (root / "wheels" / wheel).write_bytes(files[0].data)
    here = {"arm64": "aarch64", "amd64": "x86_64"}.get(platform.machine().lower(), platform.machine().lower())
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    raw = render_manifest(files, {"offline": True, "target": {"machine": here, "python": python}})
    (root / "MANIFEST.json").write_bytes(raw)
    (root / "SHA256SUMS").write_bytes(render_sha256sums(raw))


def test_verifier_checks_the_glibc_the_wheels_ask_for(tmp_path: Path) -> None:
    """--check-target refuses a wheel whose manylinux tag needs a newer glibc than this machine's."""
    import os

    glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    if not glibc.startswith("glibc "):
        pytest.skip("this machine's C library is not glibc")
    major, minor = (int(x) for x in glibc.split()[1].split(".")[:2])
    for name, tag, ok in [
        ("old", "manylinux2014_x86_64.manylinux_2_17_x86_64", True),
        ("same", f"manylinux_{major}_{minor}_x86_64", True),
        ("newer", f"manylinux_{major}_{minor + 1}_x86_64", False),
        ("pure", "any", True),
    ]:
        bundle = tmp_path / name
        bundle.mkdir()
        wheel = f"pkg-1.0-cp311-cp311-{tag}.whl" if tag != "any" else "pkg-1.0-py3-none-any.whl"
        _offline_bundle(bundle, wheel)
        done = _run_verify(bundle, "--check-target", "--blake3", "skip")
        assert (done.returncode == 0) is ok, (name, done.stderr)
        if not ok:
            assert (
                f"{wheel} needs glibc {major}.{minor + 1} or newer (manylinux_{major}_{minor + 1})"
                in done.stderr
            )
            assert f"this machine has glibc {major}.{minor} " in done.stderr
            assert f"--glibc {major}.{minor}`" in done.stderr
        # without --check-target the same bundle verifies: the files are intact
        assert _run_verify(bundle, "--blake3", "skip").returncode == 0


def test_verifier_glibc_rule() -> None:
    import runpy

    ns = runpy.run_path(str(Path(flash.__file__).parent / "templates" / "verify.py.tmpl"))
    wheel_glibc, check_glibc, refused = ns["wheel_glibc"], ns["check_glibc"], ns["Refused"]
    assert wheel_glibc("ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_aarch64.whl") == (2, 27)
    # compressed tags: any one is enough
    assert wheel_glibc("numpy-2.4.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl") == (2, 17)
    assert wheel_glibc("x-1-1-cp39-cp39-manylinux1_x86_64.manylinux2010_x86_64.whl") == (2, 5)
    assert wheel_glibc("edgeseal-0.1.0-py3-none-any.whl") is None
    assert wheel_glibc("cffi-1.17.1-cp311-cp311-musllinux_1_1_aarch64.whl") is None
    assert wheel_glibc("README.txt") is None
    wheels = ["a-1-cp311-cp311-manylinux_2_27_aarch64.whl", "b-1-cp311-cp311-manylinux2014_aarch64.whl"]
    check_glibc(wheels, "aarch64", (2, 27))
    check_glibc(wheels, "aarch64", (2, 36))
    with pytest.raises(
        refused, match=r"a-1-cp311-cp311-manylinux_2_27_aarch64.whl needs glibc 2.27 .* has glibc 2.24"
    ):
        check_glibc(wheels, "aarch64", (2, 24))
    with pytest.raises(refused, match="not glibc"):  # musl: no manylinux wheel runs
        check_glibc(wheels, "aarch64", None)
    check_glibc(["edgeseal-0.1.0-py3-none-any.whl"], "aarch64", None)


def test_user_data_is_cloud_config_yaml() -> None:
    text = render_user_data("dev-01", "dev-01.tar.gz", "edgeseal-dev-01", "ab" * 32)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert list(doc) == ["runcmd"]
    assert doc["runcmd"][0][0:2] == ["sh", "-c"]
    assert subprocess.run(["sh", "-n", "-c", doc["runcmd"][0][2]], check=False).returncode == 0


def test_install_script_is_posix_sh() -> None:
    text = flash.render_install_script("dev-01", "north")
    assert text.startswith("#!/bin/sh\n")
    assert "@@" not in text
    assert subprocess.run(["sh", "-n", "-c", text], check=False).returncode == 0
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", "-c", text], check=False).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(
            ["shellcheck", "-s", "sh", "-"], input=text, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout


def test_ssh_targets() -> None:
    assert parse_ssh_target("pi@raspberrypi.local") == SshTarget("pi", "raspberrypi.local", None)
    assert parse_ssh_target("root@10.0.0.7:2222") == SshTarget("root", "10.0.0.7", 2222)
    t = parse_ssh_target("pi@[fe80::1]:22")
    assert t == SshTarget("pi", "fe80::1", 22)
    assert t.scp_destination("/x") == "pi@[fe80::1]:/x"
    for bad in ("raspberrypi", "pi@", "@host", "pi@host:", "pi@host:99999", "pi@ho st", "pi@host;rm"):
        with pytest.raises(UsageError):
            parse_ssh_target(bad)


def _bundle(tmp_path: Path) -> Bundle:
    return Bundle(tmp_path / "b.tar.gz", "edgeseal-dev-01", "ab" * 32, 1, 1, (), True, sha256="cd" * 32)


def test_ssh_steps(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    steps = ssh_steps(
        SshTarget("pi", "h", 2222), b, options=("StrictHostKeyChecking=accept-new",), remote_dir="/tmp/d"
    )
    assert [s.name for s in steps] == ["connect", "copy", "check", "install", "clean up"]
    assert [s.on_failure for s in steps] == [False, False, False, False, True]
    connect, copy, check, install, cleanup = (s.argv for s in steps)
    # the device's own sha256sum judges the bundle, against the SHA-256 written here
    assert check[0] == "ssh"
    assert check[-1] == "cd /tmp/d && sha256sum bundle.tar.gz"
    assert steps[2].expect_sha256 == "cd" * 32
    assert '[ "${sum%% *}" = ' + "cd" * 32 + " ]" in install[-1]
    assert install[-1].index("sha256sum bundle.tar.gz") < install[-1].index("tar -xzf")
    assert cleanup[-1] == "rm -rf /tmp/d"
    assert connect[0] == "ssh"
    assert "BatchMode=yes" in connect
    assert "StrictHostKeyChecking=accept-new" in connect
    assert connect[connect.index("-p") + 1] == "2222"
    assert connect[-1] == "umask 077 && mkdir -m 700 /tmp/d"
    assert copy[0] == "scp"
    assert copy[copy.index("-P") + 1] == "2222"
    assert copy[-1] == "pi@h:/tmp/d/bundle.tar.gz"
    assert "sudo -n sh edgeseal-dev-01/install.sh --manifest-sha256 " + "ab" * 32 in install[-1]
    assert "rm -rf /tmp/d" in install[-1]
    root = ssh_steps(SshTarget("root", "h"), b, remote_dir="/tmp/d")[3].argv[-1]
    assert "sudo" not in root
    assert "-p" not in ssh_steps(SshTarget("root", "h"), b)[0].argv
    prefixed = ssh_steps(SshTarget("pi", "h"), b, remote_prefix="/home/pi/es x")[3].argv[-1]
    assert "sudo" not in prefixed
    assert "--prefix '/home/pi/es x' --no-systemd" in prefixed
    assert ssh_steps(SshTarget("pi", "h"), b)[0].argv[-1] != ssh_steps(SshTarget("pi", "h"), b)[0].argv[-1]


def test_ssh_failures_explain_themselves(tmp_path: Path) -> None:
    t = SshTarget("pi", "h", 2222)
    cases = {
        "ssh: connect to host h port 2222: Connection refused": "cannot reach h:2222",
        "ssh: Could not resolve hostname h: Name or service not known": "cannot reach",
        "ssh: connect to host h port 2222: Connection timed out": "cannot reach",
        "pi@h: Permission denied (publickey).": "authentication to pi@h",
        "Host key verification failed.": "host key of h:2222",
        "kex_exchange_identification: something odd": "ssh to h:2222 failed",
    }
    for stderr, want in cases.items():
        assert want in str(explain_ssh_failure(t, stderr)), stderr

    calls: list[str] = []

    def runner(results: dict[str, tuple[int, str]]):  # type: ignore[no-untyped-def]
        def run(step: Step) -> tuple[int, str]:
            calls.append(step.name)
            # the check step prints what sha256sum says; by default, the bundle as written
            return results.get(step.name, (0, f"{step.expect_sha256 or ''}  bundle.tar.gz\n"))

        return run

    steps = ssh_steps(t, _bundle(tmp_path), remote_dir="/tmp/d")
    with pytest.raises(RemoteError, match="cannot reach"):
        install_over_ssh(
            t, steps, runner({"connect": (255, "ssh: connect to host h port 2222: No route to host")})
        )
    assert calls == ["connect"]
    with pytest.raises(RemoteError, match="copying the bundle to h failed: scp: disk full"):
        install_over_ssh(t, steps, runner({"copy": (1, "scp: disk full")}))
    with pytest.raises(RemoteError, match=r"installer failed on h \(exit status 3\)"):
        install_over_ssh(t, steps, runner({"install": (3, "")}))
    calls.clear()
    with pytest.raises(RemoteError, match="cannot check the bundle on h: sh: 1: sha256sum: not found"):
        install_over_ssh(t, steps, runner({"check": (127, "sh: 1: sha256sum: not found")}))
    assert calls == ["connect", "copy", "check", "clean up"]  # nothing of the bundle ran
    calls.clear()
    install_over_ssh(t, steps, runner({}))
    assert calls == ["connect", "copy", "check", "install"]


def _tarball(tmp_path: Path, files: list[BundleFile]) -> Bundle:
    """A bundle written as `fleet flash` writes one, with what Bundle records of it."""
    import hashlib

    path = tmp_path / "b.tar.gz"
    with path.open("wb") as stream:
        flash.write_tar(stream, "edgeseal-dev-01", files, mtime=1_700_000_000)
    return Bundle(
        path, "edgeseal-dev-01", "ab" * 32, path.stat().st_size, len(files), (), True,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        contents={f.path: hashlib.sha256(f.data).hexdigest() for f in files},
    )  # fmt: skip


_FILES = [
    BundleFile("install.sh", b"#!/bin/sh\necho install\n", flash.MODE_EXEC),
    BundleFile("verify.py", b"print('verify')\n"),
    BundleFile("config/agent.toml", b'operator_key = "11"\n'),
    BundleFile("config/claim.token", b"t\n", flash.MODE_SECRET, secret=True),
]


def test_tar_differences_name_each_file_that_differs(tmp_path: Path) -> None:
    bundle = _tarball(tmp_path, _FILES)
    with bundle.path.open("rb") as f:
        assert flash.tar_differences(f, bundle.top, bundle.contents) == []
    changed = [
        BundleFile("install.sh", b"#!/bin/sh\necho owned\n", flash.MODE_EXEC),
        _FILES[1],
        BundleFile("config/agent.toml", b'operator_key = "ee"\n'),
        BundleFile("wheels/evil-1.0-py3-none-any.whl", b"PK"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    with _tarball(other, changed).path.open("rb") as f:
        assert flash.tar_differences(f, bundle.top, bundle.contents) == [
            "config/agent.toml changed",
            "config/claim.token is missing",
            "install.sh changed",
            "wheels/evil-1.0-py3-none-any.whl was added",
        ]
    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as tar:
        info = tarfile.TarInfo("edgeseal-dev-01/verify.py")
        info.type = tarfile.SYMTYPE
        info.linkname = "/usr/bin/true"
        tar.addfile(info)
    with linked.open("rb") as f:
        assert "verify.py is not a regular file" in flash.tar_differences(f, bundle.top, bundle.contents)
    assert flash.tar_differences(io.BytesIO(b"not gzip"), bundle.top, bundle.contents) == [
        "the archive is not a readable tar.gz"
    ]


def test_a_bundle_that_changed_after_it_was_built_is_refused_before_it_runs(tmp_path: Path) -> None:
    bundle = _tarball(tmp_path, _FILES)
    t = SshTarget("pi", "h")
    steps = ssh_steps(t, bundle, remote_dir="/tmp/d")
    calls: list[str] = []

    def device(sha: str):  # type: ignore[no-untyped-def]
        def run(step: Step) -> tuple[int, str]:
            calls.append(step.name)
            return 0, (f"{sha}  bundle.tar.gz\n" if step.name == "check" else "")

        return run

    # the copy here was changed after it was written: the refusal names the files
    original = bundle.path.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    bundle.path.write_bytes(
        _tarball(other, [*_FILES[:2], BundleFile("config/agent.toml", b"x\n")]).path.read_bytes()
    )
    with pytest.raises(BundleMismatch) as refused:
        install_over_ssh(t, steps, device("ee" * 32), bundle=bundle)
    msg = str(refused.value)
    assert msg.startswith("refused: the bundle on h is not the one fleet flash built (")
    assert "config/agent.toml changed; config/claim.token is missing" in msg
    assert "nothing of it was unpacked or run" in msg
    assert "\n" not in msg
    assert "ee" * 32 in (refused.value.hint or "")
    assert calls == ["connect", "copy", "check", "clean up"]
    # the copy here is intact: the bundle changed on the way or on the device
    bundle.path.write_bytes(original)
    with pytest.raises(BundleMismatch, match="the copy on this machine is intact"):
        install_over_ssh(t, steps, device("ee" * 32), bundle=bundle)
    calls.clear()
    install_over_ssh(t, steps, device(bundle.sha256), bundle=bundle)
    assert calls == ["connect", "copy", "check", "install"]


def test_remote_tmp_must_mean_the_same_directory_to_scp_in_both_modes() -> None:
    for good in ("/tmp", "/var/tmp/", "/data/edge-seal_1.2", "/mnt/usb@1/x+y,z=w:v%u"):
        assert check_remote_tmp(good) == good
    # scp -O gives the path to the remote shell, SFTP does not: these would mean two things
    for bad in (
        "var/tmp",
        "/tmp/a b",
        "/tmp/$(reboot)",
        "/tmp/a;b",
        "/tmp/`x`",
        "/tmp/*",
        "/tmp/'q'",
        "/tmp/a\nb",
    ):
        with pytest.raises(UsageError, match="--remote-tmp must be an absolute directory"):
            check_remote_tmp(bad)


def test_boot_plan_refusals(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        plan_boot(tmp_path / "missing", "dev-01", force=False)
    with pytest.raises(UsageError, match="does not look like"):
        plan_boot(tmp_path, "dev-01", force=False)
    (tmp_path / "cmdline.txt").write_text("x")
    plan = plan_boot(tmp_path, "dev-01", force=False)
    assert plan.bundle == tmp_path / "edgeseal" / "dev-01.tar.gz"
    assert plan.meta_data == tmp_path / "meta-data"
    (tmp_path / "user-data").write_text("#cloud-config\n")
    (tmp_path / "meta-data").write_text("instance-id: x\n")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        plan_boot(tmp_path, "dev-01", force=False)
    assert plan_boot(tmp_path, "dev-01", force=True).meta_data is None


def test_source_tree_is_this_checkout() -> None:
    assert source_tree() == ROOT
