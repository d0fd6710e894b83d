"""Where rocm_nb keeps what it downloads and builds, and the records of what it runs.

The cache root is ``$ROCM_NB_CACHE`` when set, else the platform's user cache
directory (``~/.cache/rocm_nb`` on Linux). Binaries live under ``servers/``,
models under ``models/``. It may be read-only (an image an administrator
provisioned): nothing that a start writes goes there.

The records of running servers live in a private per-user runtime folder
(:func:`runtime_root`), never in the cache: a cache can be read-only, or
shared by several users, and the records of one user must be neither
readable nor blocking for another. Saved prompt caches (:func:`warm_root`,
see :mod:`rocm_nb.server.warm`) are per user for the same reasons, and outlive
a reboot, so they live in the user's own cache folder, not the shared one.

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
    >>> warm_root({"ROCM_NB_WARM_DIR": "/tmp/w"})
    PosixPath('/tmp/w')
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from rocm_nb.errors import RuntimeDirError

__all__ = ["cache_root", "private_folder", "runtime_root", "warm_root", "write_private_json"]

_RUNTIME_ADVICE = "set ROCM_NB_RUNTIME_DIR to a folder of your own (it is created 0700)"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Return the rocm_nb cache directory (not created).

    Example:
        >>> cache_root({"ROCM_NB_CACHE": "/srv/cache"}).name
        'cache'
    """
    return _set_in(environ, "ROCM_NB_CACHE") or _user_cache()


def _set_in(environ: Mapping[str, str] | None, variable: str) -> Path | None:
    """The folder ``variable`` names in ``environ`` (``os.environ`` if ``None``), ``~`` expanded; ``None`` if unset."""
    value = (os.environ if environ is None else environ).get(variable)
    return Path(value).expanduser() if value else None


def _user_cache() -> Path:
    """This user's own cache folder for rocm_nb (``~/.cache/rocm_nb`` on Linux)."""
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
    if (chosen := _set_in(environ, "ROCM_NB_RUNTIME_DIR")) is not None:
        return chosen
    env = os.environ if environ is None else environ
    for base in (env.get("XDG_RUNTIME_DIR", ""), f"/run/user/{os.getuid()}"):
        if base and _own_folder(Path(base)):
            return Path(base) / "rocm_nb"
    return Path(tempfile.gettempdir()) / f"rocm_nb-{os.getuid()}"


def warm_root(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user folder of saved prompt caches (not created; see :func:`private_folder`).

    ``$ROCM_NB_WARM_DIR`` when set, else ``warm`` in this user's own cache
    folder (``~/.cache/rocm_nb/warm`` on Linux), whatever ``ROCM_NB_CACHE``
    says: that cache may be read-only or shared, and a saved cache holds what
    your prompts said.

    Example:
        >>> warm_root({"XDG_CACHE_HOME": "/nonexistent"}).name
        'warm'
    """
    return _set_in(environ, "ROCM_NB_WARM_DIR") or _user_cache() / "warm"


def private_folder(path: Path, what: str = "run records", advice: str = _RUNTIME_ADVICE) -> Path:
    """Create ``path`` (and its parents) as a 0700 folder of this user, or check the one there.

    An existing folder of this user with a looser mode is tightened to 0700.
    Anything else (a file, a link, another user's folder, a folder that
    cannot be created) is a :class:`~rocm_nb.errors.RuntimeDirError` that
    says what to do (``advice``; ``what`` names what the folder holds): in a
    shared temporary directory, another user could have created the name first.

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
        raise RuntimeDirError(f"cannot keep {what} in {path}: {problem}; {advice}")
    return path


def write_private_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (whole or absent: a reader never sees half of it), mode 0600.

    The text goes to a fresh temporary file beside ``path`` (``mkstemp``:
    created 0600, never an existing name), which then replaces ``path``.

    Example:
        >>> import tempfile
        >>> path = write_private_json(Path(tempfile.mkdtemp()) / "a.json", {"pid": 1})
        >>> path.read_text(), oct(path.stat().st_mode & 0o777)
        ('{"pid": 1}', '0o600')
    """
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return path
