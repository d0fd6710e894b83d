"""Where rocm_nb keeps what it downloads and builds.

The cache root is ``$ROCM_NB_CACHE`` when set, else the platform's user cache
directory (``~/.cache/rocm_nb`` on Linux). Binaries live under ``servers/``,
models under ``models/``, bookkeeping of running servers under ``run/``.

Example:
    >>> cache_root({"ROCM_NB_CACHE": "/tmp/x"})
    PosixPath('/tmp/x')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

__all__ = ["cache_root"]


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
