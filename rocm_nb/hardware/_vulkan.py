"""Whether this system's Vulkan headers are new enough to build the pinned llama.cpp's Vulkan backend.

The pinned ggml-vulkan.cpp creates its instance with ``vk::LayerSettingEXT``
and ``vk::LayerSettingsCreateInfoEXT`` (``VK_EXT_layer_settings``) outside
any ``VK_HEADER_VERSION`` guard; those types entered the Vulkan headers in
1.3.272 (KhronosGroup/Vulkan-ValidationLayers#7075 and
Vulkan-Utility-Libraries#167, "Update to header 1.3.272 … now that the
extension has been merged to the Vulkan header"). Its other newer features
are guarded (``VK_HEADER_VERSION >= 287``, ``>= 301``). Debian 12's
libvulkan-dev is 1.3.239, so the build fails there deep in the compile:
:func:`require_headers` refuses first, with the version needed.

The header version is ``VK_HEADER_VERSION`` in ``vulkan/vulkan_core.h``,
looked for under ``$VULKAN_SDK/include``, then ``/usr/local/include`` and
``/usr/include`` (below ``root``, the tests' seam).

Example:
    >>> header_version(Path("/nonexistent"), {})
    (None, None)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from rocm_nb.errors import BuildError

__all__ = ["MIN_HEADER", "header_version", "require_headers"]

MIN_HEADER = 272
"""The least ``VK_HEADER_VERSION`` (Vulkan 1.3.272) the pinned llama.cpp's Vulkan backend compiles with."""

_VERSION = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)", re.MULTILINE)


def header_version(root: Path, environ: Mapping[str, str]) -> tuple[int | None, Path | None]:
    """(``VK_HEADER_VERSION``, the ``vulkan_core.h`` it was read from); ``(None, None)`` if none is found.

    Example:
        >>> header_version(Path("/"), {"VULKAN_SDK": "/nonexistent"})[0]  # doctest: +SKIP
        239
    """
    folders = [f"{environ['VULKAN_SDK']}/include"] if environ.get("VULKAN_SDK") else []
    for folder in [*folders, "/usr/local/include", "/usr/include"]:
        header = root / folder.lstrip("/") / "vulkan" / "vulkan_core.h"
        try:
            match = _VERSION.search(header.read_text(errors="replace"))
        except OSError:
            continue
        if match:
            return int(match.group(1)), header
    return None, None


def require_headers(flags: Sequence[str], environ: Mapping[str, str], root: Path = Path("/")) -> None:
    """Raise :class:`BuildError` unless Vulkan headers of version 1.3.:data:`MIN_HEADER` or later are installed.

    Example:
        >>> require_headers(["-DGGML_VULKAN=ON"], {}, Path("/nonexistent"))
        Traceback (most recent call last):
        ...
        rocm_nb.errors.BuildError: Cannot build llama-server for Vulkan: no Vulkan headers ...
    """
    version, header = header_version(root, environ)
    if version is not None and version >= MIN_HEADER:
        return
    found = (f"the Vulkan headers at {header} are 1.3.{version}" if version is not None
             else "no Vulkan headers (vulkan/vulkan_core.h) were found")
    raise BuildError(
        f"Cannot build llama-server for Vulkan: {found}, and the pinned llama.cpp needs 1.3.{MIN_HEADER} or later "
        f"(it uses vk::LayerSettingEXT, VK_EXT_layer_settings, new in 1.3.{MIN_HEADER}; Debian 12 ships 1.3.239).\n"
        "Next step: install newer headers (the LunarG Vulkan SDK, then export VULKAN_SDK=<its x86_64 folder>, or "
        "libvulkan-dev from a newer release such as Debian 13) and run `rocm-nb server install --backend vulkan` "
        "again; or use the ROCm build (ROCm 6.4 or later uses GTT on an integrated GPU too).",
        flags=flags,
    )
