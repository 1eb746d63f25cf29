"""Installing a bundle over SSH (docs/flash.md): the steps, run through the system's ``ssh``/``scp`` by a
:class:`Runner` (``--dry-run`` swaps in one that only prints).

Nothing from the bundle runs until the device's own ``sha256sum`` has shown that the tarball there is
byte for byte the one built here; the bundle's install.sh and verify.py cannot vouch for themselves
(docs/flash.md "Tampering").
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleet_cli import flash
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.flash.build import Bundle

log = logging.getLogger(__name__)

# ssh gives up on a host that does not answer within 10 s (ssh_config(5) ConnectTimeout); a Pi on
# Wi-Fi answers in well under a second.
SSH_CONNECT_TIMEOUT_S = 10

# A dead connection during the install is noticed after 4 x 15 s without an answer (ServerAlive*).
SSH_ALIVE_INTERVAL_S = 15
SSH_ALIVE_COUNT = 4

# ssh's own exit status for connection and authentication failures (ssh(1) "EXIT STATUS").
SSH_FAILED = 255

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

_SSH_TARGET = re.compile(
    r"^(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?$"
)

# Where an SSH install unpacks the bundle on the device (a private directory is made in it and removed).
DEFAULT_REMOTE_TMP = "/tmp"  # noqa: S108 - a fresh 0700 directory of a random name, never reused

ARCHIVE = "bundle.tar.gz"  # the bundle's name in that directory


class RemoteError(FleetError):
    """Installing over SSH failed: unreachable host, authentication, a failed step."""


class BundleMismatch(RemoteError):
    """The bundle on the device is not the one that was built: refused before anything of it ran."""


# -- the edgeseal wheel -----------------------------------------------------------------------------


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
