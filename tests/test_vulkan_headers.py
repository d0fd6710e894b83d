"""`server install --backend vulkan` refuses headers older than the pinned llama.cpp needs, before any build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rocm_nb.binary._build import install_server
from rocm_nb.errors import BuildError
from rocm_nb.hardware._vulkan import MIN_HEADER, header_version, require_headers
from tests.support.sdist import pinned_source


def sdk(tmp_path: Path, version: int) -> dict[str, str]:
    """An environment whose $VULKAN_SDK has a vulkan_core.h of this header version (its first lines as shipped)."""
    include = tmp_path / f"sdk-{version}" / "include" / "vulkan"
    include.mkdir(parents=True)
    (include / "vulkan_core.h").write_text(
        "#ifndef VULKAN_CORE_H_\n#define VULKAN_CORE_H_ 1\n\n"
        f"// Version of this file\n#define VK_HEADER_VERSION {version}\n\n"
        f"// Complete version of this file\n#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, "
        "VK_HEADER_VERSION)\n")
    return {"VULKAN_SDK": str(tmp_path / f"sdk-{version}"), "PATH": os.environ["PATH"],
            "ROCM_NB_CACHE": str(tmp_path / "cache")}


@pytest.mark.unit
def test_the_minimum_is_where_the_pinned_sources_use_layer_settings() -> None:
    """vk::LayerSettingEXT (new in headers 1.3.272) is used outside any VK_HEADER_VERSION guard."""
    source = pinned_source("ggml-vulkan/ggml-vulkan.cpp")
    use = source.index("std::vector<vk::LayerSettingEXT>")
    open_conditions: list[str] = []  # the preprocessor conditionals still open where it is used
    for line in source[:use].splitlines():
        directive = line.strip()
        if directive.startswith("#if"):
            open_conditions.append(directive)
        elif directive.startswith("#endif"):
            open_conditions.pop()
    assert not any("VK_HEADER_VERSION" in condition for condition in open_conditions)
    assert MIN_HEADER == 272


@pytest.mark.unit
def test_debian_12_headers_are_refused_with_the_version_needed(tmp_path: Path) -> None:
    env = sdk(tmp_path, 239)  # Debian 12's libvulkan-dev 1.3.239
    assert header_version(Path("/"), env)[0] == 239
    with pytest.raises(BuildError, match=r"the Vulkan headers at .*vulkan_core\.h are 1\.3\.239, and the pinned "
                                         r"llama\.cpp needs 1\.3\.272 or later .*\nNext step: install newer headers"):
        install_server("vulkan", environ=env, progress=False)
    assert not (tmp_path / "cache" / "servers").exists()  # refused before anything was fetched or built
    require_headers(["-DGGML_VULKAN=ON"], sdk(tmp_path, 272))  # new enough: no error


@pytest.mark.unit
def test_missing_headers_are_named(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"no Vulkan headers \(vulkan/vulkan_core\.h\) were found") as caught:
        require_headers(["-DGGML_VULKAN=ON"], {}, tmp_path)
    assert caught.value.flags == ["-DGGML_VULKAN=ON"]
