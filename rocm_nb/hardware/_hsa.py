"""gfx target names and the ``HSA_OVERRIDE_GFX_VERSION`` policy: when ROCm may run one target as another.

Every RDNA2 chip shares gfx1030's instruction set and every RDNA3/RDNA3.5
chip gfx1100's, so an override makes ROCm load a sibling's kernels on a chip
it ships none for. Whether it ships them is read from the installed ROCm
(:mod:`rocm_nb.hardware._rocm_install`): an override is chosen only when the
target's rocBLAS kernels are missing and its family's are there. Forcing one
where ROCm ships the target's own kernels is at best needless and, under
ROCm 7.2 on gfx1151, reported harmful (Crosstalk-Solutions/project-nomad#1075).
One override applies to every GPU of a process, so it is set only when one
version serves all the GPUs llama-server will use.

Example:
    >>> from pathlib import Path
    >>> old = RocmInstall(Path("/opt/rocm"), (6, 2, 2), frozenset({"gfx1030", "gfx1100"}), frozenset())
    >>> gfx_name(110000), target_version("gfx1032"), hsa_override_for(["gfx1032"], old)
    ('gfx1100', '10.3.2', '10.3.0')
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rocm_nb.hardware._rocm_install import RocmInstall

if TYPE_CHECKING:
    from rocm_nb.hardware._types import Hardware

__all__ = ["HSA_OVERRIDES", "VISIBILITY_ENV", "OverrideDecision", "build_targets", "decide_override", "gfx_name",
           "hsa_override_for", "rocm_cannot_run", "server_env", "target_version", "version_target"]

HSA_OVERRIDES: Mapping[str, str] = {
    **dict.fromkeys(("gfx1031", "gfx1032", "gfx1033", "gfx1034", "gfx1035", "gfx1036"), "10.3.0"),
    **dict.fromkeys(("gfx1101", "gfx1102", "gfx1103", "gfx1150", "gfx1151", "gfx1152"), "11.0.0"),
}
"""The family a gfx target may borrow kernels from: the ``HSA_OVERRIDE_GFX_VERSION`` that runs it as its sibling.

Only a map: whether the override is *needed* is decided from the installed
ROCm (:func:`decide_override`). RDNA2 chips run as gfx1030 (10.3.0), RDNA3
and RDNA3.5 chips as gfx1100 (11.0.0), as llama.cpp's docs/build.md (HIP
section, pinned sources) advises.

Example:
    >>> HSA_OVERRIDES["gfx1032"], HSA_OVERRIDES["gfx1151"], HSA_OVERRIDES.get("gfx1100")
    ('10.3.0', '11.0.0', None)
"""


@dataclass(frozen=True)
class OverrideDecision:
    """The override :func:`decide_override` chose (``None``: none) and the evidence, one line per target.

    Example:
        >>> OverrideDecision(None, ("ROCm 7.1.0 ships gfx1151 kernels: no override needed",)).version is None
        True
    """

    version: str | None
    evidence: tuple[str, ...]


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


def _needs(target: str, rocm: RocmInstall) -> tuple[str | None, str]:
    """(the override this target needs, or ``None``; the evidence) for one target under ``rocm``."""
    release = f"ROCm {rocm.version_text} at {rocm.path}"
    if rocm.ships(target):
        blaslt = " and hipBLASLt" if target in rocm.hipblaslt else ""
        return None, f"{release} ships rocBLAS{blaslt} kernels for {target}: no override needed"
    family = HSA_OVERRIDES.get(target)
    if family and rocm.ships(version_target(family)):
        return family, (f"{release} ships no rocBLAS kernels for {target} but does for {version_target(family)}: "
                        f"HSA_OVERRIDE_GFX_VERSION={family} runs it as that")
    return None, (f"{release} ships no rocBLAS kernels for {target}"
                  + (f" nor for {version_target(family)}" if family else "")
                  + ": llama-server's ROCm build cannot run there; install a ROCm that supports it, "
                  "or use the Vulkan build (rocm-nb server install --backend vulkan)")


def decide_override(gfx_targets: Iterable[str], rocm: RocmInstall | None) -> OverrideDecision:
    """Whether ``HSA_OVERRIDE_GFX_VERSION`` is needed for these targets under this ROCm, and why.

    Without an install to look at, no override is chosen (ROCm 6.4 and later
    ship gfx1150/gfx1151 kernels, ROCm 7.1 gfx1103's: guessing would be
    wrong on one side or the other).

    Example:
        >>> from pathlib import Path
        >>> new = RocmInstall(Path("/opt/rocm"), (7, 1, 0), frozenset({"gfx1100", "gfx1151"}), frozenset())
        >>> decide_override(["gfx1151"], new).evidence
        ('ROCm 7.1.0 at /opt/rocm ships rocBLAS kernels for gfx1151: no override needed',)
        >>> decide_override(["gfx1103"], new).version
        '11.0.0'
    """
    targets = sorted({t.split(":")[0] for t in gfx_targets})
    if not targets:
        return OverrideDecision(None, ())
    if rocm is None:
        return OverrideDecision(None, (
            f"no ROCm install found ($ROCM_PATH or /opt/rocm with lib/rocblas/library): cannot tell whether it "
            f"ships kernels for {', '.join(targets)}, so hsa_override=\"auto\" sets none; if llama-server fails "
            "with 'invalid device function', pass the family's version, e.g. hsa_override=\"11.0.0\"",))
    needs = {target: _needs(target, rocm) for target in targets}
    evidence = tuple(line for _, line in needs.values())
    needed = {version for version, _ in needs.values() if version}
    if not needed:
        return OverrideDecision(None, evidence)
    version = needed.pop()
    if not needed and all(target_version(t) == version or HSA_OVERRIDES.get(t) == version for t in targets):
        return OverrideDecision(version, evidence)
    return OverrideDecision(None, (*evidence, f"no one HSA_OVERRIDE_GFX_VERSION suits all of {', '.join(targets)}: "
                                              "set HIP_VISIBLE_DEVICES to the GPUs of one kind"))


def rocm_cannot_run(gfx_targets: Iterable[str], rocm: RocmInstall | None) -> str | None:
    """Why ``rocm`` can run none of these targets (no kernels of their own, nor a sibling's to borrow); else ``None``.

    Unknown (no install found, or no target) is not a refusal: ROCm is tried.

    Example:
        >>> from pathlib import Path
        >>> rocm7 = RocmInstall(Path("/opt/rocm"), (7, 0, 0), frozenset({"gfx1030", "gfx1100"}), frozenset())
        >>> print(rocm_cannot_run(["gfx1010"], rocm7))  # doctest: +ELLIPSIS
        ROCm 7.0.0 at /opt/rocm ships no rocBLAS kernels for gfx1010: llama-server's ROCm build cannot run there; ...
        >>> rocm_cannot_run(["gfx1032"], rocm7) is None  # HSA_OVERRIDE_GFX_VERSION=10.3.0 runs it as gfx1030
        True
    """
    targets = sorted({t.split(":")[0] for t in gfx_targets})
    if rocm is None or not targets:
        return None
    needs = [_needs(target, rocm) for target in targets]
    if any(version is not None or rocm.ships(target) for target, (version, _) in zip(targets, needs, strict=True)):
        return None
    return "; ".join(evidence for _, evidence in needs)


def hsa_override_for(gfx_targets: Iterable[str], rocm: RocmInstall | None = None) -> str | None:
    """The ``HSA_OVERRIDE_GFX_VERSION`` that lets ``rocm`` run all of these targets, if one is needed and one fits.

    ``None`` when no target needs an override, when one override cannot
    serve them all (it applies to every GPU of the process), or when no ROCm
    install is known (see :func:`decide_override`).

    Example:
        >>> from pathlib import Path
        >>> old = RocmInstall(Path("/opt/rocm"), (6, 2, 2), frozenset({"gfx1030", "gfx1100"}), frozenset())
        >>> hsa_override_for(["gfx1032"], old), hsa_override_for(["gfx1030", "gfx1035"], old)
        ('10.3.0', '10.3.0')
        >>> hsa_override_for(["gfx1100"], old), hsa_override_for(["gfx1032"], None)
        (None, None)
        >>> hsa_override_for(["gfx1032", "gfx1100"], old) is None  # 10.3.0 would break the gfx1100
        True
    """
    return decide_override(gfx_targets, rocm).version


def build_targets(hw: Hardware) -> tuple[str, ...]:
    """The gfx targets of ``hw``'s GPUs plus the one an ``HSA_OVERRIDE_GFX_VERSION`` runs them as (``GPU_TARGETS``).

    Example:
        >>> from pathlib import Path
        >>> from rocm_nb.hardware import GPU, Hardware
        >>> old = RocmInstall(Path("/opt/rocm"), (6, 2, 2), frozenset({"gfx1030", "gfx1100"}), frozenset())
        >>> rx6600 = Hardware("rocm", (GPU(0, "RX 6600", "gfx1032", "amd", None, None, False),), None, (), old)
        >>> build_targets(rx6600)
        ('gfx1030', 'gfx1032')
    """
    override = hsa_override_for(hw.gfx_targets, hw.rocm)
    extra = {version_target(override)} if override else set()
    return tuple(sorted(set(hw.gfx_targets) | extra))


VISIBILITY_ENV: Mapping[str, tuple[str, ...]] = {
    "rocm": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
    "cuda": ("CUDA_VISIBLE_DEVICES",),
    "vulkan": ("GGML_VK_VISIBLE_DEVICES",),
}
"""Per backend, the variable that says which GPUs llama-server sees (set from ``Hardware.visible_devices``), then
others the user may have set instead; a user's own setting always wins.

Example:
    >>> VISIBILITY_ENV["vulkan"]
    ('GGML_VK_VISIBLE_DEVICES',)
"""

_CALLER = 4
"""The warnings point at the line that made the ``LocalModel``: this function, ``_options.plan_server``,
``LocalModel.__init__``, then the caller (a test checks it)."""


def server_env(hw: Hardware, environ: Mapping[str, str] | None = None, *,
               hsa_override: str | None = None) -> dict[str, str]:
    """What a llama-server child on ``hw`` adds to its environment (the user's own settings win).

    ``HIP_VISIBLE_DEVICES`` unless the user set a visibility of their own;
    ``HSA_OVERRIDE_GFX_VERSION`` when ``hsa_override`` (``"auto"`` or a
    version such as ``"10.3.0"``) asks for one on ROCm, said with a
    :class:`UserWarning` (one already in ``environ`` is kept, with a warning).

    Example:
        >>> import warnings
        >>> from rocm_nb.hardware import GPU, Hardware
        >>> from pathlib import Path
        >>> old = RocmInstall(Path("/opt/rocm"), (6, 2, 2), frozenset({"gfx1030"}), frozenset())
        >>> hw = Hardware("rocm", (GPU(0, "RX 6600", "gfx1032", "amd", None, None, False),), None, (), old)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     server_env(hw, {}, hsa_override="auto"), server_env(hw, {})
        ({'HSA_OVERRIDE_GFX_VERSION': '10.3.0'}, {})
        >>> masked = Hardware("rocm", (), "0", ())
        >>> server_env(masked, {}), server_env(masked, {"HIP_VISIBLE_DEVICES": "1"})
        ({'HIP_VISIBLE_DEVICES': '0'}, {})
    """
    env = os.environ if environ is None else environ
    result = {}
    names = VISIBILITY_ENV.get(hw.backend, ())
    if names and hw.visible_devices is not None and not any(name in env for name in names):
        result[names[0]] = hw.visible_devices
    if hsa_override is None:
        return result
    version = hsa_override_for(hw.gfx_targets, hw.rocm) if hsa_override == "auto" else hsa_override
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
