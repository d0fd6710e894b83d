"""Whether another user could have put or changed a program rocm_nb is about to run from the cache.

A cache install is a folder of programs that rocm_nb runs as you. If another
user can write the install (its folder, its manifest or a program in it),
or any folder above it up to the cache root (and so rename the install and
put their own in its place), a "newer" install they planted would be picked
and run with your rights. So an install is used only if every one of those
paths is owned by you or by root and is writable by no one else, as ssh's
``StrictModes`` and sudo decide for the files they trust.

Group-writable is accepted only for a *private* group: one whose only member
is the path's owner (Debian's and Ubuntu's user private groups, under a
umask of 002), as Debian's ssh does; world-writable never is. A cache that
root populated and left read-only (an administrator's image shared by every
user) passes; a cache that another ordinary user built does not: run your
own (``ROCM_NB_CACHE``), or have an administrator own it.

The check stops at the cache root, the folder the user (or ``ROCM_NB_CACHE``)
chose; paths are followed through symbolic links (a link's own mode means
nothing; what it points to is checked).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> untrusted(folder, up_to=folder) is None
    True
    >>> folder.chmod(0o777)
    >>> str(untrusted(folder, up_to=folder))  # doctest: +ELLIPSIS
    '... is writable by every user'
    >>> untrusted(folder, up_to=folder).fix  # doctest: +ELLIPSIS
    'chmod go-w ...'
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["Untrusted", "untrusted", "vet_install"]


class Untrusted(NamedTuple):
    """A path another user could change: which, why, and the command that makes it safe.

    Example:
        >>> reason = Untrusted(Path("/srv/cache"), "belongs to uid 1001 (ann), not to you or root", owner=False)
        >>> str(reason), reason.fix
        ('/srv/cache belongs to uid 1001 (ann), not to you or root', 'sudo chown root: /srv/cache')
    """

    path: Path
    problem: str
    owner: bool = True
    """Whether the owner is fine (then the mode is what is wrong)."""

    def __str__(self) -> str:
        return f"{self.path} {self.problem}"

    @property
    def fix(self) -> str:
        """The command that makes the path safe, if you trust what is in it."""
        return f"chmod go-w {self.path}" if self.owner else f"sudo chown root: {self.path}"


def _name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _private_group(gid: int, owner: int) -> bool:
    """Whether group ``gid`` has ``owner`` as its only member (as primary group and in the group file)."""
    try:
        group = grp.getgrgid(gid)
        owner_name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    primary = [user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid]
    return set(primary) <= {owner} and set(group.gr_mem) <= {owner_name} and bool(primary or group.gr_mem)


def _why(path: Path) -> Untrusted | None:
    """What lets another user change ``path`` itself, or ``None``."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None  # nothing there yet: whoever creates it is checked then
    except OSError as exc:
        return Untrusted(path, f"cannot be checked ({exc.strerror or exc})", owner=False)
    if info.st_uid not in (os.geteuid(), 0):
        return Untrusted(path, f"belongs to {_name(info.st_uid)}, not to you or root", owner=False)
    if info.st_mode & stat.S_IWOTH:
        return Untrusted(path, "is writable by every user")
    if info.st_mode & stat.S_IWGRP and not _private_group(info.st_gid, info.st_uid):
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        return Untrusted(path, f"is writable by the group {group}, which has other members")
    return None


def untrusted(path: Path, *, up_to: Path) -> Untrusted | None:
    """Why another user could change ``path`` or a folder above it up to ``up_to`` (inclusive); ``None`` if none can.

    Paths that do not exist yet are passed over.

    Example:
        >>> untrusted(Path("/usr/bin/env"), up_to=Path("/usr"))  # root's, 0755
    """
    chain = [path, *path.parents]
    stop = next((i for i, folder in enumerate(chain) if folder == up_to), len(chain) - 1)
    for link in chain[: stop + 1]:
        reason = _why(link)
        if reason is not None:
            return reason
    return None


def vet_install(directory: Path, files: Iterable[str], *, root: Path) -> Untrusted | None:
    """Why the cache install in ``directory`` must not be run (another user could have changed it), or ``None``.

    Checks ``files`` in it (its manifest and its programs), the folder, and
    every folder above it up to the cache ``root``.

    Example:
        >>> vet_install(Path("/usr/bin"), ["env"], root=Path("/usr"))
    """
    for name in files:
        reason = _why(directory / name)
        if reason is not None:
            return reason
    return untrusted(directory, up_to=root)
