"""Which Vulkan headers the pinned llama.cpp's Vulkan backend needs, and the version of a set of headers.

The pinned ggml-vulkan.cpp creates its instance with ``vk::LayerSettingEXT``
and ``vk::LayerSettingsCreateInfoEXT`` (``VK_EXT_layer_settings``) outside
any ``VK_HEADER_VERSION`` guard; those types entered the Vulkan headers in
1.3.272 (KhronosGroup/Vulkan-ValidationLayers#7075 and
Vulkan-Utility-Libraries#167, "Update to header 1.3.272 … now that the
extension has been merged to the Vulkan header"). Its other newer features
are guarded (``VK_HEADER_VERSION >= 287``, ``>= 301``). Debian 12's
libvulkan-dev is 1.3.239, so the build fails there deep in the compile:
:func:`rocm_nb.binary._vulkan_sdk.find_vulkan_sdk` looks for newer headers
first (or fetches Debian 13's) and refuses with the version needed.

A set of headers' version is ``VK_HEADER_VERSION`` in ``vulkan/vulkan_core.h``.

Example:
    >>> version_in(Path("/nonexistent")) is None
    True
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MIN_HEADER", "version_in"]

MIN_HEADER = 272
"""The least ``VK_HEADER_VERSION`` (Vulkan 1.3.272) the pinned llama.cpp's Vulkan backend compiles with."""

_VERSION = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)", re.MULTILINE)


def version_in(include: Path) -> int | None:
    """``VK_HEADER_VERSION`` of the headers in ``include`` (the folder holding ``vulkan/``); ``None`` if none.

    Example:
        >>> version_in(Path("/usr/include"))  # doctest: +SKIP
        239
    """
    try:
        match = _VERSION.search((include / "vulkan" / "vulkan_core.h").read_text(errors="replace"))
    except OSError:
        return None
    return int(match.group(1)) if match else None
