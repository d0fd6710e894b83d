"""What the Vulkan build of llama-server needs: headers new enough, glslc, SPIRV-Headers and the Vulkan loader.

**Headers.** The pinned llama.cpp needs Vulkan headers 1.3.272 or later
(:mod:`rocm_nb.hardware._vulkan` says why). They are looked for, in this
order: the folder given (``--vulkan-headers DIR``), ``$VULKAN_SDK/include``
(the LunarG SDK), the system's (``/usr/local/include``, ``/usr/include``),
then headers fetched earlier into the rocm_nb cache (only if no other user
could have changed them: :mod:`rocm_nb.binary._trust`, as for installs). The
first that is new enough is used; older ones are passed over and named if
nothing suits.

**Fetching Debian 13's headers.** Debian 12 ships 1.3.239. With
``fetch=True`` (``rocm-nb server install --backend vulkan
--fetch-vulkan-headers``; ``make test`` does this) and no suitable headers,
Debian 13's ``libvulkan-dev`` (1.4.309) is downloaded with ``apt-get
download`` from the Debian archive, using a sources list, package lists and
a package cache of its own (apt's ``Dir::Etc::sourcelist``,
``Dir::State::Lists`` and ``Dir::Cache`` options), and unpacked with
``dpkg -x`` into ``<cache>/vulkan-headers``. Nothing is installed system-wide
and the system's apt state is left as it was. The package is headers, a
CMake package file and a ``libvulkan.so`` link: the program still links
against the system's loader (``libvulkan.so.1``, package ``libvulkan1``), which
this module names to CMake when the system has no ``libvulkan.so`` link of
its own. On Debian 13 the system's headers are new enough and nothing is
fetched.

Example:
    >>> sdk = VulkanSdk(Path("/usr/include"), 309, "the system's headers", None)
    >>> sdk.flags()
    ['-DVulkan_INCLUDE_DIR=/usr/include']
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rocm_nb._paths import cache_root
from rocm_nb.binary._trust import Untrusted, untrusted
from rocm_nb.errors import BuildError
from rocm_nb.hardware._vulkan import MIN_HEADER, HeaderVersion, version_in

__all__ = ["DEBIAN_PACKAGE", "DEBIAN_SOURCES", "VulkanSdk", "fetch_debian_headers", "find_vulkan_sdk"]

DEBIAN_SOURCES = "deb http://deb.debian.org/debian trixie main"
"""Where Debian 13's ``libvulkan-dev`` comes from: the Debian archive apt already uses, release pinned."""

DEBIAN_PACKAGE = "libvulkan-dev"

_FETCHED = "vulkan-headers"  # under the cache root
_INSTALL_TOOLS = "sudo apt-get install glslc spirv-headers libvulkan1 mesa-vulkan-drivers"
_LOADER = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
Run = Callable[[Sequence[str], Path], None]


@dataclass(frozen=True)
class VulkanSdk:
    """The Vulkan headers a build uses (``include`` holds ``vulkan/vulkan_core.h``), where they came from, and
    the loader to link when CMake would not find it by itself.

    Example:
        >>> sdk = VulkanSdk(Path("/c/usr/include"), HeaderVersion(309, "1.4"), "the rocm_nb cache",
        ...                 Path("/usr/lib/libvulkan.so.1"))
        >>> sdk.flags()[1], sdk.label
        ('-DVulkan_LIBRARY=/usr/lib/libvulkan.so.1', 'Vulkan headers 1.4.309 (the rocm_nb cache)')
    """

    include: Path
    version: HeaderVersion
    source: str
    library: Path | None

    def flags(self) -> list[str]:
        """The CMake flags that point the build at these headers (and at the loader, if needed)."""
        return [f"-DVulkan_INCLUDE_DIR={self.include}",
                *([f"-DVulkan_LIBRARY={self.library}"] if self.library is not None else [])]

    @property
    def label(self) -> str:
        """One phrase for logs and the manifest: ``Vulkan headers 1.4.309 (the system's headers)``."""
        return f"Vulkan headers {self.version} ({self.source})"


def _candidates(environ: Mapping[str, str], headers: Path | None, root: Path) -> list[tuple[Path, str]]:
    """Include folders to try, in order, each with where it came from."""
    found: list[tuple[Path, str]] = []
    if headers is not None:
        given = headers.expanduser()
        found += [(folder, f"--vulkan-headers {headers}") for folder in (given, given / "include", given / "usr" /
                                                                          "include")]
    if environ.get("VULKAN_SDK"):
        found.append((Path(environ["VULKAN_SDK"]) / "include", f"$VULKAN_SDK={environ['VULKAN_SDK']}"))
    found += [(root / "usr" / "local" / "include", "the system's headers"), (root / "usr" / "include",
                                                                            "the system's headers")]
    fetched = cache_root(environ) / _FETCHED
    found.append((fetched / "usr" / "include", f"Debian 13's {DEBIAN_PACKAGE}, fetched into {fetched}"))
    return found


def _loader(environ: Mapping[str, str], root: Path) -> Path | None:
    """The loader to name to CMake: ``None`` where CMake finds a ``libvulkan.so`` itself (the SDK's, a -dev
    package's), else the system's ``libvulkan.so.1`` (a fetched package's link points at a file it lacks)."""
    sdk = environ.get("VULKAN_SDK")
    if sdk and (Path(sdk) / "lib" / "libvulkan.so").exists():
        return None
    if any((root / folder.lstrip("/") / "libvulkan.so").exists() for folder in _LOADER):
        return None
    return next((root / folder.lstrip("/") / "libvulkan.so.1" for folder in _LOADER
                 if (root / folder.lstrip("/") / "libvulkan.so.1").exists()), None)


def _require_tools(flags: Sequence[str], environ: Mapping[str, str], root: Path) -> None:
    """Refuse, with the one command that fixes it, when glslc, SPIRV-Headers or the Vulkan loader is missing."""
    path = environ.get("PATH", "")
    sdk = environ.get("VULKAN_SDK")
    missing = []
    if not shutil.which("glslc", path=path) and not (sdk and (Path(sdk) / "bin" / "glslc").exists()):
        missing.append("glslc (the shader compiler)")
    prefixes = [Path(sdk)] if sdk else []
    prefixes += [root / "usr", root / "usr" / "local"]
    if not any(glob.glob(str(prefix / pattern)) for prefix in prefixes for pattern in
               ("share/cmake/SPIRV-Headers", "lib/cmake/SPIRV-Headers", "lib/*/cmake/SPIRV-Headers")):
        missing.append("SPIRV-Headers (their CMake package)")
    if not any((root / folder.lstrip("/") / name).exists() for folder in _LOADER
               for name in ("libvulkan.so", "libvulkan.so.1")) and not sdk:
        missing.append("the Vulkan loader (libvulkan.so.1)")
    if missing:
        raise BuildError(f"Cannot build llama-server for Vulkan: {', '.join(missing)} not found.\n"
                         f"Next step: `{_INSTALL_TOOLS}` (Debian and Ubuntu), or the LunarG Vulkan SDK with "
                         "VULKAN_SDK set; then run `rocm-nb server install --backend vulkan` again.", flags=flags)


def find_vulkan_sdk(flags: Sequence[str], environ: Mapping[str, str], *, headers: Path | None = None,
                    fetch: bool = False, root: Path = Path("/"), run: Run | None = None) -> VulkanSdk:
    """The Vulkan headers (and loader) to build with, found or (``fetch``) fetched; else :class:`BuildError`.

    Example:
        >>> find_vulkan_sdk(["-DGGML_VULKAN=ON"], {"PATH": "", "ROCM_NB_CACHE": "/nonexistent"},
        ...                 root=Path("/nonexistent"))
        Traceback (most recent call last):
        ...
        rocm_nb.errors.BuildError: Cannot build llama-server for Vulkan: glslc (the shader compiler), ...
    """
    _require_tools(flags, environ, root)
    seen = []
    fetched_root = cache_root(environ) / _FETCHED
    for folder, source in _candidates(environ, headers, root):
        version = version_in(folder)
        if version is None:
            continue
        if folder.is_relative_to(fetched_root) and (reason := _tampered(fetched_root, cache_root(environ))):
            seen.append(f"the fetched headers at {folder} were not used: {reason} ({reason.fix} makes them safe)")
            continue
        if version.patch >= MIN_HEADER:
            return VulkanSdk(folder, version, source, _loader(environ, root))
        seen.append(f"{source} at {folder} are {version}")
    if fetch:
        fetched = fetch_debian_headers(environ, run=run)
        version = version_in(fetched)
        if version is not None and version.patch >= MIN_HEADER:
            return VulkanSdk(fetched, version, f"Debian 13's {DEBIAN_PACKAGE}, fetched into {fetched.parents[1]}",
                             _loader(environ, root))
        seen.append(f"the fetched headers at {fetched} are {version or 'unreadable'}")
    found = "; ".join(seen) if seen else "no Vulkan headers (vulkan/vulkan_core.h) were found"
    apt = shutil.which("apt-get", path=environ.get("PATH", "")) is not None
    fix = ("rocm-nb server install --backend vulkan --fetch-vulkan-headers` (downloads Debian 13's libvulkan-dev "
           "into the rocm_nb cache; nothing is installed system-wide)" if apt else
           "VULKAN_SDK=<the LunarG Vulkan SDK's x86_64 folder> rocm-nb server install --backend vulkan`")
    raise BuildError(
        f"Cannot build llama-server for Vulkan: {found}, and the pinned llama.cpp needs 1.3.{MIN_HEADER} or later "
        f"(it uses vk::LayerSettingEXT, new in 1.3.{MIN_HEADER}; Debian 12 ships 1.3.239).\n"
        f"Next step: `{fix}; or point --vulkan-headers at newer headers.", flags=flags)


def _tampered(fetched: Path, cache: Path) -> Untrusted | None:
    """Why another user could have changed the fetched headers (they are compiled into a program you run)."""
    return next(filter(None, (untrusted(path, up_to=cache) for path in [fetched, *sorted(fetched.rglob("*"))])), None)


def _run(argv: Sequence[str], cwd: Path) -> None:
    """Run one step of the fetch; a failure becomes a :class:`BuildError` with the command and its output."""
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, errors="replace", check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise BuildError(f"Fetching Debian 13's {DEBIAN_PACKAGE} failed: `{' '.join(argv)}` exited with status "
                         f"{done.returncode}:\n{tail}\nNext step: check that this machine reaches deb.debian.org and "
                         "trusts Debian's archive key (package debian-archive-keyring), or use --vulkan-headers.",
                         flags=[])


def fetch_debian_headers(environ: Mapping[str, str], *, run: Run | None = None) -> Path:
    """Download and unpack Debian 13's ``libvulkan-dev`` into the cache (once); return its include folder.

    ``run(argv, cwd)`` runs each command (a seam for tests). The unpacked
    tree is renamed into place only when complete, with a ``fetched.json``
    that names the package file and the sources list it came from.

    Example:
        >>> fetch_debian_headers({"ROCM_NB_CACHE": "/c"})  # doctest: +SKIP
        PosixPath('/c/vulkan-headers/usr/include')
    """
    step = run or _run
    final = cache_root(environ) / _FETCHED
    if (final / "fetched.json").is_file():
        return final / "usr" / "include"
    tools = {name: shutil.which(name, path=environ.get("PATH", "")) for name in ("apt-get", "dpkg")}
    if not all(tools.values()):
        raise BuildError(f"Cannot fetch Debian 13's {DEBIAN_PACKAGE}: apt-get and dpkg are needed (Debian or "
                         "Ubuntu).\nNext step: install the LunarG Vulkan SDK and set VULKAN_SDK, or use "
                         "--vulkan-headers DIR.", flags=[])
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{_FETCHED}-", dir=final.parent) as scratch:
        work = Path(scratch)
        for folder in ("lists/partial", "cache/archives/partial", "unpacked"):
            (work / folder).mkdir(parents=True)
        (work / "sources.list").write_text(DEBIAN_SOURCES + "\n")
        options = [f"-oDir::Etc::sourcelist={work / 'sources.list'}", "-oDir::Etc::sourceparts=-",
                   f"-oDir::State::Lists={work / 'lists'}", f"-oDir::Cache={work / 'cache'}",
                   *(["-oAPT::Sandbox::User=root"] if os.geteuid() == 0 else [])]
        step([str(tools["apt-get"]), *options, "-qq", "update"], work)
        step([str(tools["apt-get"]), *options, "-qq", "download", DEBIAN_PACKAGE], work)
        packages = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not packages:
            raise BuildError(f"apt-get download {DEBIAN_PACKAGE} left no package file in {work}", flags=[])
        step([str(tools["dpkg"]), "-x", str(packages[0]), str(work / "unpacked")], work)
        (work / "unpacked" / "fetched.json").write_text(json.dumps(
            {"package": packages[0].name, "sources": DEBIAN_SOURCES}, indent=2) + "\n")
        if not (final / "fetched.json").is_file():  # another process may have finished first
            shutil.rmtree(final, ignore_errors=True)
            (work / "unpacked").rename(final)
    return final / "usr" / "include"
