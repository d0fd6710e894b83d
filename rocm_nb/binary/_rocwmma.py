"""rocWMMA flash attention: which GPUs can use it, the build flag, and the check that the sources have it.

llama.cpp's ``-DGGML_HIP_ROCWMMA_FATTN=ON`` compiles a flash-attention kernel
on rocWMMA, the matrix cores of RDNA3 and later and of CDNA. The pinned
llama.cpp no longer declares the option, so a build that asks for it checks
the sources first rather than letting CMake ignore it silently.

Example:
    >>> rocwmma_fattn_supported(["gfx1100"]), rocwmma_fattn_supported(["gfx1030"])
    (True, False)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from pathlib import Path

from rocm_nb.errors import BuildError
from rocm_nb.hardware import Backend, Hardware

__all__ = ["ROCWMMA_FATTN_TARGETS", "ROCWMMA_FLAG", "build_options", "require_option", "rocwmma_fattn_supported",
           "rocwmma_flag"]

ROCWMMA_OPTION = "GGML_HIP_ROCWMMA_FATTN"
ROCWMMA_FLAG = f"-D{ROCWMMA_OPTION}=ON"
ROCWMMA_FATTN_TARGETS = ("gfx11*", "gfx12*", "gfx908", "gfx90a", "gfx942", "gfx950")
"""GPUs with the matrix cores rocWMMA drives: RDNA3 and later (gfx11xx, gfx12xx) and CDNA 1 to 4.

Example:
    >>> rocwmma_fattn_supported(["gfx1100"]), rocwmma_fattn_supported(["gfx1030"])
    (True, False)
"""


def rocwmma_fattn_supported(gfx_targets: Sequence[str]) -> bool:
    """Whether every one of these (at least one) gfx targets can use rocWMMA flash attention.

    Example:
        >>> rocwmma_fattn_supported(["gfx942"]), rocwmma_fattn_supported(["gfx1201", "gfx1032"])
        (True, False)
    """
    return bool(gfx_targets) and all(
        any(fnmatch.fnmatchcase(t.split(":")[0], pattern) for pattern in ROCWMMA_FATTN_TARGETS) for t in gfx_targets
    )


def build_options(hardware: Hardware) -> list[str]:
    """Optional build flags that suit this machine's GPUs, as advice lines for ``rocm-nb doctor``.

    Example:
        >>> build_options(Hardware("cpu", (), None, ()))
        []
    """
    if hardware.backend != "rocm" or not rocwmma_fattn_supported(hardware.gfx_targets):
        return []
    return [
        f"{', '.join(hardware.gfx_targets)} can use rocWMMA flash attention: rocm-nb server install --rocwmma-fattn "
        f"(needs rocWMMA, e.g. the rocwmma-dev package, and llama.cpp sources with {ROCWMMA_OPTION}; "
        "the build checks them first)"
    ]


def rocwmma_flag(backend: Backend, gfx_targets: Sequence[str], flags: Sequence[str]) -> str:
    """The CMake flag for rocWMMA flash attention, or :class:`BuildError` if these GPUs cannot use it.

    Example:
        >>> rocwmma_flag("rocm", ["gfx942"], [])
        '-DGGML_HIP_ROCWMMA_FATTN=ON'
    """
    if backend != "rocm" or not rocwmma_fattn_supported(gfx_targets):
        what = f"GPU targets {', '.join(gfx_targets) or '(none found)'}" if backend == "rocm" else f"{backend}"
        raise BuildError(
            f"rocWMMA flash attention ({ROCWMMA_FLAG}) is for the ROCm backend on RDNA3 or later "
            f"(gfx11xx, gfx12xx) and CDNA (gfx908, gfx90a, gfx942, gfx950) GPUs; this build is for {what}.\n"
            "Next step: leave out --rocwmma-fattn (flash attention works without it).",
            flags=flags,
        )
    return ROCWMMA_FLAG


def require_option(src: Path, flags: Sequence[str], option: str = ROCWMMA_OPTION) -> None:
    """Raise :class:`BuildError` unless the llama.cpp sources in ``src`` declare the CMake ``option``.

    Example:
        >>> require_option(Path("/nonexistent"), [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        rocm_nb.errors.BuildError: The llama.cpp sources in /nonexistent have no GGML_HIP_ROCWMMA_FATTN option ...
    """
    declared = src / "ggml" / "CMakeLists.txt"
    text = declared.read_text(errors="replace") if declared.is_file() else ""
    if not re.search(rf"option\(\s*{option}\b", text):
        raise BuildError(
            f"The llama.cpp sources in {src} have no {option} option (none in {declared}): "
            f"-D{option}=ON would be ignored (llama.cpp has since removed its rocWMMA flash-attention kernel; "
            "its flash attention runs on these GPUs without it).\n"
            "Next step: leave out --rocwmma-fattn, or build a llama.cpp checkout that has the "
            "option with install_server(..., rocwmma_fattn=True, source_dir=Path('/path/to/llama.cpp')).",
            flags=flags,
        )
