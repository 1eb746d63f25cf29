"""``fleet flash NAME``: build a device's provisioning bundle, install it over SSH, or put it on a boot
partition with a cloud-init first-boot hook (docs/flash.md). The work is in :mod:`fleet_cli.flash`."""

from __future__ import annotations

import logging
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from fleet_cli import flash
from fleet_cli.errors import UsageError
from fleet_cli.flash.boot import (
    plan_boot,
    write_boot,
)
from fleet_cli.flash.build import (
    Bundle,
    BundleOptions,
    build_bundle,
)
from fleet_cli.flash.ssh import (
    DEFAULT_REMOTE_TMP,
    Runner,
    check_remote_tmp,
    install_over_ssh,
    parse_ssh_target,
    run_step,
    ssh_steps,
)
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption

log = logging.getLogger(__name__)


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
