"""gfx target names and the ``HSA_OVERRIDE_GFX_VERSION`` policy: when ROCm may run one target as another.

Every RDNA2 chip shares gfx1030's instruction set and every RDNA3 chip
gfx1100's, so an override makes ROCm load a sibling's kernels on a chip it
ships none for. One override applies to every GPU of a process, so it is set
only when one version serves all the GPUs llama-server will use.

Example:
    >>> gfx_name(110000), target_version("gfx1032"), hsa_override_for(["gfx1032"])
    ('gfx1100', '10.3.2', '10.3.0')
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rocm_nb._gpu_types import Hardware

__all__ = ["HSA_OVERRIDES", "build_targets", "gfx_name", "hsa_override_for", "server_env", "target_version",
           "version_target"]

HSA_OVERRIDES: Mapping[str, str] = {
    **dict.fromkeys(("gfx1031", "gfx1032", "gfx1033", "gfx1034", "gfx1035", "gfx1036"), "10.3.0"),
    "gfx1103": "11.0.0",
}
"""gfx targets ROCm ships no kernels for that run as a sibling target: ``HSA_OVERRIDE_GFX_VERSION``.

Every RDNA2 chip shares gfx1030's instruction set and every RDNA3 chip
gfx1100's, so ``HSA_OVERRIDE_GFX_VERSION=10.3.0`` (or ``11.0.0``) makes ROCm
load the gfx1030 (gfx1100) kernels on them, as llama.cpp's docs/build.md (HIP
section, pinned sources) advises. The keys are the RDNA2/RDNA3 targets missing
from rocBLAS's supported-target lists (ROCm 6.0 to 7.0: gfx1010, gfx1012,
gfx1030, gfx1100, gfx1101, gfx1102, then gfx1150/gfx1151/gfx1200/gfx1201;
ROCm 7.1 adds gfx1103, for which the override is then merely harmless).

Example:
    >>> HSA_OVERRIDES["gfx1032"], HSA_OVERRIDES.get("gfx1100")
    ('10.3.0', None)
"""


def gfx_name(version: int) -> str:
    """KFD's ``gfx_target_version`` as a target name: 110000 → gfx1100, 90010 → gfx90a; 0 → ``""``.

    Example:
        >>> gfx_name(90010), gfx_name(0)
        ('gfx90a', '')
    """
    major, minor, stepping = version // 10000, version // 100 % 100, version % 100
    return f"gfx{major}{minor:x}{stepping:x}" if major else ""


def target_version(arch: str) -> str:
    """The ``HSA_OVERRIDE_GFX_VERSION`` form of a target: gfx1030 → 10.3.0, gfx90a → 9.0.10.

    Example:
        >>> target_version("gfx90a:xnack-")
        '9.0.10'
    """
    digits = arch.removeprefix("gfx").split(":")[0]
    return f"{digits[:-2]}.{int(digits[-2], 16)}.{int(digits[-1], 16)}"


def version_target(version: str) -> str:
    """The target an ``HSA_OVERRIDE_GFX_VERSION`` stands for: 10.3.0 → gfx1030.

    Example:
        >>> version_target("11.0.0")
        'gfx1100'
    """
    major, minor, stepping = (int(part) for part in version.split("."))
    return gfx_name(major * 10000 + minor * 100 + stepping)


def hsa_override_for(gfx_targets: Iterable[str]) -> str | None:
    """The ``HSA_OVERRIDE_GFX_VERSION`` that lets ROCm run all of these targets, if one is needed and one fits.

    ``None`` when no target needs an override, or when one override cannot
    serve them all (it applies to every GPU of the process).

    Example:
        >>> hsa_override_for(["gfx1032"]), hsa_override_for(["gfx1030", "gfx1035"]), hsa_override_for(["gfx1100"])
        ('10.3.0', '10.3.0', None)
        >>> hsa_override_for(["gfx1032", "gfx1100"]) is None  # 10.3.0 would break the gfx1100
        True
    """
    targets = [t.split(":")[0] for t in gfx_targets]
    needed = {HSA_OVERRIDES[t] for t in targets if t in HSA_OVERRIDES}
    if len(needed) != 1:
        return None
    [version] = needed
    return version if all(t in HSA_OVERRIDES or target_version(t) == version for t in targets) else None


def build_targets(gfx_targets: tuple[str, ...]) -> tuple[str, ...]:
    """The targets plus the one an ``HSA_OVERRIDE_GFX_VERSION`` runs them as (for ``GPU_TARGETS``).

    Example:
        >>> build_targets(("gfx1032",)), build_targets(("gfx1100",))
        (('gfx1030', 'gfx1032'), ('gfx1100',))
    """
    override = hsa_override_for(gfx_targets)
    extra = {version_target(override)} if override else set()
    return tuple(sorted(set(gfx_targets) | extra))


_CALLER = 5
"""The warnings point at the line that made the ``LocalModel``: this function, ``Hardware.server_env``,
``_options.plan_server``, ``LocalModel.__init__``, then the caller (a test checks it)."""


def server_env(hw: Hardware, environ: Mapping[str, str] | None, hsa_override: str | None) -> dict[str, str]:
    """The body of :meth:`Hardware.server_env <rocm_nb.hardware.Hardware.server_env>`: what a llama-server child adds.

    ``HIP_VISIBLE_DEVICES`` unless the user set a visibility of their own;
    ``HSA_OVERRIDE_GFX_VERSION`` when ``hsa_override`` (``"auto"`` or a
    version such as ``"10.3.0"``) asks for one on ROCm, said with a
    :class:`UserWarning` (one already in ``environ`` is kept, with a warning).

    Example:
        >>> import warnings
        >>> from rocm_nb.hardware import GPU, Hardware
        >>> hw = Hardware("rocm", (GPU(0, "RX 6600", "gfx1032", "amd", None, None, False),), None, ())
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     server_env(hw, {}, "auto"), server_env(hw, {}, None)
        ({'HSA_OVERRIDE_GFX_VERSION': '10.3.0'}, {})
    """
    env = os.environ if environ is None else environ
    result = {}
    if hw.backend == "rocm" and hw.visible_devices is not None and not (
        "HIP_VISIBLE_DEVICES" in env or "ROCR_VISIBLE_DEVICES" in env
    ):
        result["HIP_VISIBLE_DEVICES"] = hw.visible_devices
    if hsa_override is None:
        return result
    version = hsa_override_for(hw.gfx_targets) if hsa_override == "auto" else hsa_override
    if hsa_override != "auto" and not re.fullmatch(r"\d+\.\d+\.\d+", hsa_override):
        raise ValueError(f"hsa_override={hsa_override!r} is not a gfx version such as '10.3.0'; "
                         "use 'auto', a version like '10.3.0' or '11.0.0', or None")
    if version is None or hw.backend != "rocm":
        return result
    if "HSA_OVERRIDE_GFX_VERSION" in env:
        warnings.warn(f"HSA_OVERRIDE_GFX_VERSION={env['HSA_OVERRIDE_GFX_VERSION']} from your environment is "
                      f"kept for llama-server; hsa_override={hsa_override!r} is ignored", stacklevel=_CALLER)
    else:
        result["HSA_OVERRIDE_GFX_VERSION"] = version
        warnings.warn(f"HSA_OVERRIDE_GFX_VERSION={version} set for llama-server only: ROCm runs "
                      f"{', '.join(hw.gfx_targets) or 'the GPU'} as {version_target(version)} "
                      "(pass hsa_override=None to turn this off)", stacklevel=_CALLER)
    return result
