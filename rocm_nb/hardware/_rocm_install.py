"""The ROCm install llama-server runs on: its version, and the gfx targets its BLAS libraries ship kernels for.

Whether a GPU needs ``HSA_OVERRIDE_GFX_VERSION`` is a fact about the
installed ROCm, not about the GPU alone: ROCm 6.2 ships no rocBLAS kernels
for gfx1151, ROCm 6.4 and later do. llama.cpp's HIP backend multiplies
matrices with hipBLAS, that is rocBLAS (which may call hipBLASLt), and
rocBLAS loads its Tensile kernels for the GPU's target from
``lib/rocblas/library``: ``TensileLibrary_lazy_gfx1151.dat`` beside
``Kernels.so-000-gfx1151.hsaco`` and ``TensileLibrary_*_gfx1151.co``/``.hsaco``
files (compressed ``.dat.zlib`` in newer releases, and in per-target
folders ``library/gfx1151/`` in TheRock's builds). A target whose files are
missing there fails with "rocBLAS error: Cannot read …TensileLibrary.dat …
for GPU arch : gfx…". hipBLASLt's ``lib/hipblaslt/library`` is read the same
way and reported beside it.

The install is ``$ROCM_PATH`` or ``/opt/rocm``; its version is the first
line of ``.info/version`` (``7.1.0-38`` → 7.1.0), else the ``rocm-7.1.0``
name ``/opt/rocm`` links to.

Example:
    >>> find_rocm(Path("/nonexistent"), {}) is None
    True
    >>> sorted(library_targets(["TensileLibrary_lazy_gfx1151.dat", "Kernels.so-000-gfx906-xnack-.hsaco",
    ...                         "TensileLibrary_Type_HH_Contraction_l_Ailk_Bjlk_Cijk_Dijk_fallback.dat"]))
    ['gfx1151', 'gfx906']
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RocmInstall", "find_rocm", "library_targets"]

_TARGET = re.compile(r"(?<![0-9a-z])(gfx[0-9a-f]{3,4})(?![0-9a-f])")
_ROCBLAS = Path("lib/rocblas/library")
_HIPBLASLT = Path("lib/hipblaslt/library")


@dataclass(frozen=True)
class RocmInstall:
    """A ROCm install: where, which version, and the targets its rocBLAS and hipBLASLt ship kernels for.

    Example:
        >>> rocm = RocmInstall(Path("/opt/rocm"), (6, 4, 1), frozenset({"gfx1100", "gfx1151"}), frozenset())
        >>> rocm.version_text, rocm.ships("gfx1151"), rocm.ships("gfx1103")
        ('6.4.1', True, False)
    """

    path: Path
    version: tuple[int, ...] | None
    rocblas: frozenset[str]
    """Targets with rocBLAS Tensile files (``TensileLibrary_lazy_<target>.dat`` and kernels)."""
    hipblaslt: frozenset[str]
    """Targets with hipBLASLt files (``TensileLibrary_lazy_<target>.dat``, ``extop_<target>.co``)."""

    @property
    def version_text(self) -> str:
        """``"7.1.0"``, or ``"(version unknown)"``."""
        return ".".join(map(str, self.version)) if self.version else "(version unknown)"

    def ships(self, target: str) -> bool:
        """Whether rocBLAS, which llama.cpp's HIP backend needs, has kernels for ``target``."""
        return target.split(":")[0] in self.rocblas

    def older_than(self, version: tuple[int, ...]) -> bool:
        """Whether the version is known and below ``version`` (an unknown one is not "older")."""
        return self.version is not None and self.version < version


def library_targets(names: Iterable[str]) -> frozenset[str]:
    """The gfx targets named in a Tensile library folder's file (or per-target folder) names."""
    return frozenset(match.group(1) for name in names for match in _TARGET.finditer(name))


def _listing(folder: Path) -> list[str]:
    """File names in ``folder`` and in its per-target subfolders (``library/gfx1151/…``); none if unreadable."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    names = [entry.name for entry in entries]
    for entry in entries:
        if entry.is_dir() and _TARGET.fullmatch(entry.name):
            try:
                names += [child.name for child in entry.iterdir()]
            except OSError:
                continue
    return [name for name in names if ".dat" in name or name.endswith((".co", ".hsaco"))]


def _version(path: Path) -> tuple[int, ...] | None:
    """``.info/version``'s ``7.1.0-38`` as (7, 1, 0), else the ``rocm-7.1.0`` folder name; ``None`` if neither."""
    candidates = []
    with contextlib.suppress(OSError, IndexError, UnicodeDecodeError):
        candidates.append((path / ".info" / "version").read_text().strip().splitlines()[0])
    candidates.append(path.resolve().name.removeprefix("rocm-"))
    for text in candidates:
        match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if match:
            return tuple(int(part) for part in match.groups() if part is not None)
    return None


def find_rocm(root: Path = Path("/"), environ: Mapping[str, str] | None = None) -> RocmInstall | None:
    """The ROCm install at ``$ROCM_PATH`` or ``/opt/rocm`` (below ``root``, the tests' seam); ``None`` if absent.

    An install counts when its rocBLAS library folder exists.

    Example:
        >>> find_rocm(environ={"ROCM_PATH": "/nonexistent"}) is None
        True
    """
    env = os.environ if environ is None else environ
    path = root / env.get("ROCM_PATH", "/opt/rocm").lstrip("/")
    if not (path / _ROCBLAS).is_dir():
        return None
    return RocmInstall(path, _version(path), library_targets(_listing(path / _ROCBLAS)),
                       library_targets(_listing(path / _HIPBLASLT)))
