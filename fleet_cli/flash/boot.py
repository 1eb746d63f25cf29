"""Writing a bundle and a cloud-init first-boot hook onto a Raspberry Pi boot partition (docs/flash.md)."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_protocol.keys import atomic_write
from fleet_cli import flash
from fleet_cli.errors import UsageError
from fleet_cli.flash.build import (
    Bundle,
    BundleError,
)

log = logging.getLogger(__name__)

BOOT_MARKERS = ("config.txt", "cmdline.txt")  # what every Raspberry Pi boot partition holds


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
