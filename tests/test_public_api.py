"""The public surface of ``rocm_nb``, pinned: a name added or dropped is a decision, made here too."""

from __future__ import annotations

import subprocess
import sys

import pytest

import rocm_nb

pytestmark = pytest.mark.unit

PUBLIC = [
    "AmbiguousModel",
    "AsyncTokenStream",
    "BinaryNotFound",
    "BuildError",
    "Capabilities",
    "ChatPanel",
    "Client",
    "Completion",
    "ContextUse",
    "Delta",
    "FitPlan",
    "GenerationError",
    "GenerationTimeout",
    "GpuMonitor",
    "GpuUsage",
    "ImagesNotSupported",
    "InvalidModel",
    "LocalModel",
    "LocalRouter",
    "MemoryEstimate",
    "ModelClosed",
    "ModelNotFound",
    "ModelNotStarted",
    "ModelState",
    "MonitorSample",
    "NextTokenExplorer",
    "ProcessUsage",
    "Progress",
    "ProjectorMismatch",
    "Prompt",
    "ReplyView",
    "RocmNbError",
    "RouterChild",
    "SamplerPlayground",
    "SchemaMismatch",
    "ServerCrashed",
    "ServerInfo",
    "ServerStartError",
    "ServerStartTimeout",
    "ServerStatus",
    "ServerUnavailable",
    "StreamProtocolError",
    "TextTooLong",
    "Timings",
    "TokenPiece",
    "TokenProb",
    "TokenStream",
    "TokenView",
    "ToolCall",
    "ToolRun",
    "Usage",
    "connect",
    "gpu_usage",
    "install_server",
    "load_ipython_extension",
    "models",
    "rpc_worker",
    "search",
]


def test_all_is_exactly_the_public_names_sorted() -> None:
    assert rocm_nb.__all__ == PUBLIC
    assert sorted(PUBLIC) == PUBLIC


def test_every_public_name_resolves_and_dir_lists_the_lazy_ones_too() -> None:
    code = ("import rocm_nb, sys; names = dir(rocm_nb); "
            "print(all(n in names for n in rocm_nb.__all__), "
            "sorted({'rocm_nb.notebook.monitor', 'rocm_nb.binary._build'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(maxsplit=1) == ["True", "[]\n"], "dir() names the lazy names without importing them"
    import inspect

    for name in PUBLIC:
        value = getattr(rocm_nb, name)
        if inspect.isclass(value) or inspect.isfunction(value):  # (type aliases such as Prompt have no home)
            assert value.__module__.split(".")[0] == "rocm_nb", (name, value.__module__)
    assert rocm_nb.install_server.__module__ == "rocm_nb.binary._build"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        rocm_nb.nothing_here  # noqa: B018


def test_the_error_subclasses_are_caught_by_their_base_and_their_builtin() -> None:
    pairs = [(rocm_nb.ServerUnavailable, ConnectionError), (rocm_nb.GenerationTimeout, TimeoutError),
             (rocm_nb.SchemaMismatch, ValueError), (rocm_nb.StreamProtocolError, rocm_nb.GenerationError)]
    for error, builtin in pairs:
        assert issubclass(error, rocm_nb.GenerationError) and issubclass(error, builtin)


def _public_modules() -> list[str]:
    import pkgutil

    names = [name for _, name, _ in pkgutil.walk_packages(rocm_nb.__path__, "rocm_nb.")]
    return sorted(name for name in names if not any(part.startswith("_") for part in name.split(".")))


def test_no_public_name_is_exported_from_two_public_modules() -> None:
    """One import path per name: besides the top-level re-exports, each name has one public home."""
    import importlib

    homes: dict[str, list[str]] = {}
    for module_name in _public_modules():
        for name in getattr(importlib.import_module(module_name), "__all__", ()):
            homes.setdefault(name, []).append(module_name)
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}


def test_the_package_is_grouped_in_families() -> None:
    """At most about 20 modules at the top of rocm_nb/, the rest in the family subpackages."""
    import pkgutil

    top = [info for info in pkgutil.iter_modules(rocm_nb.__path__)]
    families = sorted(info.name for info in top if info.ispkg)
    assert families == ["binary", "client", "hardware", "modelfiles", "notebook", "server"]
    assert len([info for info in top if not info.ispkg]) <= 20
