"""Writing the broker's files so that exactly the right users can read them.

Mosquitto started as root switches to ``run_as`` (Debian: ``mosquitto``) *before* it opens the
password, ACL and key files (docs/field-notes.md "Mosquitto"). So, when we are root, the broker directory is
``root:<run_as group>`` 0750, secrets 0640 with that group, public files 0644, and the persistence
directory belongs to ``run_as`` (it writes there). Run as a normal user, Mosquitto stays that user:
directory 0700, secrets 0600. Every file is written atomically (temp file, fsync, rename, fsync of
the directory) so a reload never reads a half-written ACL.
"""

from __future__ import annotations

import contextlib
import enum
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from broker_config.errors import BrokerFileError


class Visibility(enum.Enum):
    PRIVATE = "private"  # password file, ACL, server key, conf: the broker's user and the owner only
    PUBLIC = "public"  # certificates


@dataclass(frozen=True)
class Ownership:
    """Who owns the broker's files. ``gid`` None: files stay with the current user, no group access."""

    uid: int
    gid: int | None
    run_as_uid: int | None  # owner of the persistence directory when we are root

    def file_mode(self, visibility: Visibility) -> int:
        if visibility is Visibility.PUBLIC:
            return 0o644
        return 0o640 if self.gid is not None else 0o600

    @property
    def dir_mode(self) -> int:
        return 0o750 if self.gid is not None else 0o700


def ownership_for(run_as: str) -> Ownership:
    """Root: share with ``run_as``'s primary group. Anyone else: private to the current user."""
    uid = os.geteuid()
    if uid != 0:
        return Ownership(uid, None, None)
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise BrokerFileError(
            f"the broker would run as user {run_as!r}, which does not exist",
            hint="install Debian's mosquitto package (it creates the user) or set [broker] run_as "
            "in fleet.toml",
        ) from None
    return Ownership(0, entry.pw_gid, entry.pw_uid)


def atomic_write_text(path: Path, text: str, ownership: Ownership, visibility: Visibility) -> None:
    """Replace ``path`` with ``text``: readers see the old or the new file, never a torn one."""
    mode = ownership.file_mode(visibility)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if ownership.gid is not None:
                os.fchown(fd, ownership.uid, ownership.gid)
            os.fchmod(fd, mode)
            data = memoryview(text.encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BrokerFileError(f"cannot write {path}: {e.strerror or e}") from e


def prepare_dir(path: Path, ownership: Ownership, *, owner_is_broker: bool = False) -> None:
    """Create ``path`` (and parents) and give it the broker directory's owner and mode.

    ``owner_is_broker`` is for the persistence directory, which the broker itself writes.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        if ownership.gid is not None:
            uid = ownership.uid
            if owner_is_broker and ownership.run_as_uid is not None:
                uid = ownership.run_as_uid
            os.chown(path, uid, ownership.gid)
        path.chmod(0o700 if owner_is_broker else ownership.dir_mode)
    except OSError as e:
        raise BrokerFileError(f"cannot prepare directory {path}: {e.strerror or e}") from e


def blocking_dir(path: Path, run_as: str) -> Path | None:
    """The first existing parent of ``path`` that user ``run_as`` cannot traverse, or None.

    Always None unless we are root (otherwise the broker runs as us).
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        return None  # ownership_for() reports this one
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if run_as in g.gr_mem}
    for parent in reversed(Path(path).absolute().parents):
        try:
            st = parent.stat()
        except FileNotFoundError:
            return None  # will be created by us with mode 0755
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return parent
    return None


def check_reachable(path: Path, run_as: str) -> None:
    """Raise :class:`BrokerFileError` if user ``run_as`` cannot traverse every parent of ``path``.

    A home directory of mode 0700 (``/root``) is the usual culprit: the broker would then fail
    with "Unable to open pwfile".
    """
    parent = blocking_dir(path, run_as)
    if parent is not None:
        mode = stat.S_IMODE(parent.stat().st_mode)
        raise BrokerFileError(
            f"the broker runs as user {run_as!r}, which cannot enter {parent} (mode {mode:o}), "
            f"so it could not read its files under {path}",
            hint=(
                f"put the broker directory where {run_as!r} can reach it: set [broker] dir in "
                "fleet.toml (e.g. /var/lib/edgeseal/broker) or use --home, or `chmod o+x` that directory"
            ),
        )
