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
    "Client",
    "Completion",
    "ContextUse",
    "Delta",
    "FitPlan",
    "GenerationError",
    "GenerationTimeout",
    "GpuMonitor",
    "GpuUsage",
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
            "sorted({'rocm_nb.monitor', 'rocm_nb._build'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(maxsplit=1) == ["True", "[]\n"], "dir() names the lazy names without importing them"
    for name in PUBLIC:
        assert getattr(rocm_nb, name) is not None
    assert rocm_nb.install_server.__module__ == "rocm_nb._build"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        rocm_nb.nothing_here  # noqa: B018


def test_the_error_subclasses_are_caught_by_their_base_and_their_builtin() -> None:
    pairs = [(rocm_nb.ServerUnavailable, ConnectionError), (rocm_nb.GenerationTimeout, TimeoutError),
             (rocm_nb.SchemaMismatch, ValueError), (rocm_nb.StreamProtocolError, rocm_nb.GenerationError)]
    for error, builtin in pairs:
        assert issubclass(error, rocm_nb.GenerationError) and issubclass(error, builtin)
