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

A set of headers' version is ``VK_HEADER_VERSION`` in ``vulkan/vulkan_core.h``
(it only grows, from 1.3 to 1.4 too, so it alone orders them), completed by
the API version in ``VK_HEADER_VERSION_COMPLETE``: Debian 13's 309 is 1.4.309.

Example:
    >>> version_in(Path("/nonexistent")) is None
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIN_HEADER", "HeaderVersion", "version_in"]

MIN_HEADER = 272
"""The least ``VK_HEADER_VERSION`` (Vulkan 1.3.272) the pinned llama.cpp's Vulkan backend compiles with."""

_VERSION = re.compile(r"^#define\s+VK_HEADER_VERSION\s+(\d+)", re.MULTILINE)
_COMPLETE = re.compile(
    r"^#define\s+VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_API_VERSION\(\s*\d+\s*,\s*(\d+)\s*,\s*(\d+)\s*,", re.MULTILINE)


@dataclass(frozen=True)
class HeaderVersion:
    """The version of a set of Vulkan headers: ``patch`` orders them, ``api`` names them.

    ``api`` is ``None`` in headers older than ``VK_HEADER_VERSION_COMPLETE``
    (all far below :data:`MIN_HEADER`).

    Example:
        >>> str(HeaderVersion(309, "1.4")), str(HeaderVersion(70, None)), HeaderVersion(309, "1.4").patch >= MIN_HEADER
        ('1.4.309', 'VK_HEADER_VERSION 70', True)
    """

    patch: int
    api: str | None

    def __str__(self) -> str:
        return f"{self.api}.{self.patch}" if self.api else f"VK_HEADER_VERSION {self.patch}"


def version_in(include: Path) -> HeaderVersion | None:
    """The version of the headers in ``include`` (the folder holding ``vulkan/``); ``None`` if none.

    Example:
        >>> version_in(Path("/usr/include"))  # doctest: +SKIP
        HeaderVersion(patch=239, api='1.3')
    """
    try:
        text = (include / "vulkan" / "vulkan_core.h").read_text(errors="replace")
    except OSError:
        return None
    if (match := _VERSION.search(text)) is None:
        return None
    complete = _COMPLETE.search(text)
    return HeaderVersion(int(match.group(1)), f"{complete.group(1)}.{complete.group(2)}" if complete else None)
