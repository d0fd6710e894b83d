"""The Vulkan build finds headers new enough (or fetches Debian 13's), and refuses with the one line that fixes it.

Each test builds a machine under ``tmp_path`` (``root``): its ``/usr/include``,
the SPIRV-Headers CMake package, the Vulkan loader, and ``glslc`` on ``PATH``,
as Debian's packages lay them out. The real fetch from Debian's archive runs
in tests/test_vulkan.py (the ``vulkan`` tier) and in ``make test``'s setup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from rocm_nb.binary._build import install_server
from rocm_nb.binary._smoke import SmokeResult
from rocm_nb.binary._vulkan_sdk import DEBIAN_SOURCES, fetch_debian_headers, find_vulkan_sdk
from rocm_nb.errors import BuildError
from rocm_nb.hardware import Hardware
from rocm_nb.hardware._vulkan import MIN_HEADER, HeaderVersion, version_in
from rocm_nb.hardware._vulkan_devices import parse_vulkaninfo
from tests.support.sdist import pinned_source
from tests.support.sysfs import FIXTURES
from tests.test_binary import tiny_llama_cpp

pytestmark = pytest.mark.unit

FLAGS = ["-DGGML_VULKAN=ON"]
LIB = "usr/lib/x86_64-linux-gnu"


def headers(include: Path, version: int) -> Path:
    """A vulkan_core.h of this header version (its first lines as shipped: 1.4 from 303 on) under ``include``."""
    (include / "vulkan").mkdir(parents=True, exist_ok=True)
    (include / "vulkan" / "vulkan_core.h").write_text(
        "#ifndef VULKAN_CORE_H_\n#define VULKAN_CORE_H_ 1\n\n"
        f"// Version of this file\n#define VK_HEADER_VERSION {version}\n\n"
        f"// Complete version of this file\n#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, "
        f"{4 if version >= 303 else 3}, VK_HEADER_VERSION)\n")
    return include


def debian(tmp_path: Path, system_headers: int | None = 239, *, dev_link: bool = False,
           tools: bool = True) -> tuple[Path, dict[str, str]]:
    """A Debian machine with libvulkan1 (and libvulkan-dev's headers of ``system_headers``, if any), glslc and
    spirv-headers; its environment (an empty rocm_nb cache, PATH with glslc, apt-get and dpkg)."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / LIB).mkdir(parents=True)
    bin_dir.mkdir()
    (root / LIB / "libvulkan.so.1").touch()
    if dev_link:
        (root / LIB / "libvulkan.so").symlink_to("libvulkan.so.1")
    if system_headers is not None:
        headers(root / "usr" / "include", system_headers)
    names = ["apt-get", "dpkg", *(["glslc"] if tools else [])]
    for name in names:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    if tools:
        (root / "usr/share/cmake/SPIRV-Headers").mkdir(parents=True)
    return root, {"PATH": str(bin_dir), "ROCM_NB_CACHE": str(tmp_path / "cache")}


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


def test_debian_12_headers_are_refused_with_the_one_line_that_fixes_it(tmp_path: Path) -> None:
    root, env = debian(tmp_path, 239)
    assert version_in(root / "usr" / "include") == HeaderVersion(239, "1.3")
    with pytest.raises(BuildError) as caught:
        find_vulkan_sdk(FLAGS, env, root=root)
    message = str(caught.value)
    assert f"the system's headers at {root}/usr/include are 1.3.239" in message
    assert "the pinned llama.cpp needs 1.3.272 or later" in message
    assert message.splitlines()[-1].startswith(
        "Next step: `rocm-nb server install --backend vulkan --fetch-vulkan-headers` (downloads Debian 13's "
        "libvulkan-dev into the rocm_nb cache; nothing is installed system-wide)")
    assert not (tmp_path / "cache").exists()  # refused before anything was fetched or built
    (tmp_path / "bin" / "apt-get").unlink()  # no apt (not Debian or Ubuntu): the LunarG SDK is the way
    with pytest.raises(BuildError, match=r"Next step: `VULKAN_SDK=<the LunarG Vulkan SDK's x86_64 folder> rocm-nb"):
        find_vulkan_sdk(FLAGS, env, root=root)


def test_headers_are_taken_in_order_the_given_folder_sdk_system_then_the_cache(tmp_path: Path) -> None:
    root, env = debian(tmp_path, 239)
    fetched = headers(tmp_path / "cache" / "vulkan-headers" / "usr" / "include", 309)
    sdk = find_vulkan_sdk(FLAGS, env, root=root)  # the old system headers are passed over
    assert (sdk.include, sdk.version) == (fetched, HeaderVersion(309, "1.4")) and "fetched into" in sdk.source
    assert sdk.flags() == [f"-DVulkan_INCLUDE_DIR={fetched}", f"-DVulkan_LIBRARY={root / LIB / 'libvulkan.so.1'}"]
    lunarg = headers(tmp_path / "sdk" / "include", 290).parent
    assert find_vulkan_sdk(FLAGS, {**env, "VULKAN_SDK": str(lunarg)}, root=root).version == HeaderVersion(290, "1.3")
    mine = headers(tmp_path / "mine" / "usr" / "include", 300).parents[1]
    chosen = find_vulkan_sdk(FLAGS, {**env, "VULKAN_SDK": str(lunarg)}, headers=mine, root=root)
    assert (str(chosen.version), chosen.source) == ("1.3.300", f"--vulkan-headers {mine}")


def test_new_system_headers_with_their_dev_link_need_no_loader_flag(tmp_path: Path) -> None:
    """Debian 13: libvulkan-dev 1.4.309 installs the headers and the libvulkan.so link CMake finds itself."""
    root, env = debian(tmp_path, 309, dev_link=True)
    sdk = find_vulkan_sdk(FLAGS, env, root=root)
    assert (sdk.version, sdk.source, sdk.library) == (HeaderVersion(309, "1.4"), "the system's headers", None)
    assert sdk.label == "Vulkan headers 1.4.309 (the system's headers)"


def test_missing_tools_are_named_with_the_command_that_installs_them(tmp_path: Path) -> None:
    root, env = debian(tmp_path, 309, tools=False)
    with pytest.raises(BuildError, match=r"glslc \(the shader compiler\), SPIRV-Headers \(their CMake package\) not "
                                         r"found\.\nNext step: `sudo apt-get install glslc spirv-headers libvulkan1 "
                                         r"mesa-vulkan-drivers`") as caught:
        find_vulkan_sdk(FLAGS, env, root=root)
    assert caught.value.flags == FLAGS


def test_fetching_uses_apts_own_folders_and_renames_the_tree_into_place_once(tmp_path: Path) -> None:
    root, env = debian(tmp_path, 239)
    calls: list[list[str]] = []

    def run(argv: Sequence[str], cwd: Path) -> None:  # apt-get and dpkg as they leave their files
        calls.append(list(argv))
        if "download" in argv:
            (cwd / "libvulkan-dev_1.4.309.0-1_amd64.deb").write_bytes(b"!<arch>\n")
        if Path(argv[0]).name == "dpkg":
            headers(Path(argv[3]) / "usr" / "include", 309)

    sdk = find_vulkan_sdk(FLAGS, env, fetch=True, root=root, run=run)
    assert sdk.version.patch == 309 and sdk.include == tmp_path / "cache" / "vulkan-headers" / "usr" / "include"
    update, download, unpack = calls
    private = [option for option in update if option.startswith("-oDir::")]
    assert [o.split("=")[0] for o in private] == ["-oDir::Etc::sourcelist", "-oDir::Etc::sourceparts",
                                                  "-oDir::State::Lists", "-oDir::Cache"]
    assert all(str(tmp_path / "cache") in o for o in private if not o.endswith("=-"))  # never the system's folders
    assert update[-1] == "update" and download[-2:] == ["download", "libvulkan-dev"]
    assert unpack[1] == "-x" and not (tmp_path / "root" / "var").exists()
    fetched = (tmp_path / "cache" / "vulkan-headers" / "fetched.json").read_text()
    assert "libvulkan-dev_1.4.309.0-1_amd64.deb" in fetched and DEBIAN_SOURCES in fetched
    assert fetch_debian_headers(env, run=run) == sdk.include and len(calls) == 3  # once only
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["vulkan-headers"]  # no scratch left behind
    assert os.access(sdk.include / "vulkan" / "vulkan_core.h", os.R_OK)


def test_a_vulkan_build_uses_the_headers_found_and_is_proven_on_the_vulkan_device(tmp_path: Path) -> None:
    """The tiny CMake stand-in for llama.cpp (tests/test_binary.py), built with a LunarG-style $VULKAN_SDK."""
    sdk = tmp_path / "sdk"
    headers(sdk / "include", 309)
    (sdk / "share" / "cmake" / "SPIRV-Headers").mkdir(parents=True)
    (sdk / "bin").mkdir()
    (sdk / "bin" / "glslc").write_text("#!/bin/sh\n")
    (sdk / "bin" / "glslc").chmod(0o755)
    environ = {**os.environ, "ROCM_NB_CACHE": str(tmp_path / "cache"), "VULKAN_SDK": str(sdk)}
    environ.pop("GGML_VK_VISIBLE_DEVICES", None)
    [lavapipe] = parse_vulkaninfo((FIXTURES / "vulkaninfo-debian12-lavapipe.txt").read_text())
    source = tiny_llama_cpp(tmp_path / "llama.cpp", 'std::puts("version: 0.0.1 (tiny)"); return 0;')
    proven: list[tuple[bool, str | None]] = []

    def smoke(binary: Path, *, gpu: bool, environ: dict[str, str]) -> SmokeResult:
        proven.append((gpu, environ.get("GGML_VK_VISIBLE_DEVICES")))
        return SmokeResult(True, 0.0, "stand-in")

    with pytest.raises(BuildError, match=r"no Vulkan device was found to prove the build on before it is installed"):
        install_server("vulkan", environ=environ, source_dir=source, progress=False, smoke=smoke,
                       hardware=Hardware("cpu", (), None, ()))
    assert proven == [] and not list((tmp_path / "cache").glob("servers/vulkan-*"))  # refused before building
    built = install_server("vulkan", environ=environ, source_dir=source, progress=False, smoke=smoke,
                           hardware=Hardware("vulkan", (lavapipe,), "0", ()))
    assert proven == [(True, "0")]  # every layer offloaded, on lavapipe, which llama.cpp uses only when named
    assert built.backend == "vulkan" and built.path.parent.name.startswith("vulkan-native-")
    manifest = json.loads((built.path.parent / "manifest.json").read_text())
    assert {"-DGGML_VULKAN=ON", f"-DVulkan_INCLUDE_DIR={sdk / 'include'}"} <= set(manifest["flags"])
    assert manifest["vulkan_headers"] == f"Vulkan headers 1.4.309 ($VULKAN_SDK={sdk})"
    assert manifest["smoke_device"] == "llvmpipe (LLVM 15.0.6, 256 bits)"


def test_fetched_headers_another_user_could_change_are_not_built_with(tmp_path: Path) -> None:
    """They are compiled into a program you run: the same rule as for cached installs (rocm_nb.binary._trust)."""
    root, env = debian(tmp_path, 239)
    fetched = headers(tmp_path / "cache" / "vulkan-headers" / "usr" / "include", 309)
    assert find_vulkan_sdk(FLAGS, env, root=root).include == fetched
    (fetched / "vulkan" / "vulkan_core.h").chmod(0o666)
    with pytest.raises(BuildError, match=r"the fetched headers at .* were not used: .*vulkan_core\.h is writable by "
                                         r"every user \(chmod go-w .*\)"):
        find_vulkan_sdk(FLAGS, env, root=root)


def test_headers_older_than_the_complete_version_are_named_by_their_header_version(tmp_path: Path) -> None:
    include = tmp_path / "include"
    (include / "vulkan").mkdir(parents=True)
    (include / "vulkan" / "vulkan_core.h").write_text("#define VK_HEADER_VERSION 70\n")
    assert version_in(include) == HeaderVersion(70, None)
    assert str(version_in(include)) == "VK_HEADER_VERSION 70"
