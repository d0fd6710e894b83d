"""Where rocm_nb keeps what it downloads and builds, and the records of what it runs.

The cache root is ``$ROCM_NB_CACHE`` when set, else the platform's user cache
directory (``~/.cache/rocm_nb`` on Linux). Binaries live under ``servers/``,
models under ``models/``. It may be read-only (an image an administrator
provisioned): nothing that a start writes goes there.

The records of running servers live in a private per-user runtime folder
(:func:`runtime_root`), never in the cache: a cache can be read-only, or
shared by several users, and the records of one user must be neither
readable nor blocking for another.

Decision: :func:`runtime_root` follows platformdirs' ``user_runtime_dir``
rules (an ``XDG_RUNTIME_DIR`` we own, else ``/run/user/UID``, else a folder
in the temporary directory) but is written out here, because platformdirs
warns on every lookup without ``XDG_RUNTIME_DIR`` (containers, root) and its
fallback differs between versions.

Example:
    >>> cache_root({"ROCM_NB_CACHE": "/tmp/x"})
    PosixPath('/tmp/x')
    >>> runtime_root({"ROCM_NB_RUNTIME_DIR": "/tmp/y"})
    PosixPath('/tmp/y')
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import platformdirs

from rocm_nb.errors import RuntimeDirError

__all__ = ["cache_root", "private_folder", "runtime_root"]

_RUNTIME_ADVICE = "set ROCM_NB_RUNTIME_DIR to a folder of your own (it is created 0700)"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Return the rocm_nb cache directory (not created).

    Example:
        >>> cache_root({"ROCM_NB_CACHE": "/srv/cache"}).name
        'cache'
    """
    env = os.environ if environ is None else environ
    override = env.get("ROCM_NB_CACHE")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("rocm_nb", appauthor=False))


def _own_folder(path: Path) -> bool:
    """True if ``path`` is a real folder (not a link) of this user."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def runtime_root(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user folder for records of running servers (not created; see :func:`private_folder`).

    ``$ROCM_NB_RUNTIME_DIR`` when set; else ``rocm_nb`` in ``$XDG_RUNTIME_DIR``
    or ``/run/user/UID``, whichever is a folder of this user; else
    ``rocm_nb-UID`` in the temporary directory.

    Example:
        >>> runtime_root({"ROCM_NB_RUNTIME_DIR": "~/rt"}) == Path("~/rt").expanduser()
        True
        >>> runtime_root({"XDG_RUNTIME_DIR": "/nonexistent"}).name == f"rocm_nb-{os.getuid()}"
        True
    """
    env = os.environ if environ is None else environ
    override = env.get("ROCM_NB_RUNTIME_DIR")
    if override:
        return Path(override).expanduser()
    for base in (env.get("XDG_RUNTIME_DIR", ""), f"/run/user/{os.getuid()}"):
        if base and _own_folder(Path(base)):
            return Path(base) / "rocm_nb"
    return Path(tempfile.gettempdir()) / f"rocm_nb-{os.getuid()}"


def private_folder(path: Path) -> Path:
    """Create ``path`` (and its parents) as a 0700 folder of this user, or check the one there.

    An existing folder of this user with a looser mode is tightened to 0700.
    Anything else (a file, a link, another user's folder, a folder that
    cannot be created) is a :class:`~rocm_nb.errors.RuntimeDirError` that
    says what to do: in a shared temporary directory, another user could
    have created the name first.

    Example:
        >>> import tempfile
        >>> oct(private_folder(Path(tempfile.mkdtemp()) / "run").stat().st_mode & 0o777)
        '0o700'
        >>> private_folder(Path("/etc/hostname"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rocm_nb.errors.RuntimeDirError: cannot keep run records in /etc/hostname: it is not a folder; set ROCM_NB_...
    """
    try:
        with contextlib.suppress(FileExistsError):  # a file or a link there: said below
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
        problem = ("it is not a folder" if not stat.S_ISDIR(info.st_mode) else
                   f"it belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
                   if info.st_uid != os.getuid() else "")
        if not problem and stat.S_IMODE(info.st_mode) != 0o700:
            path.chmod(0o700)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        raise RuntimeDirError(f"cannot keep run records in {path}: {problem}; {_RUNTIME_ADVICE}")
    return path
