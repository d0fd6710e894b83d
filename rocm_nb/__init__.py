"""rocm_nb: a local LLM on your own GPU, the notebook way.

Runs llama.cpp's ``llama-server`` as a child process (ROCm first, CUDA,
Vulkan or CPU) and streams tokens from it into Python and Jupyter.

Example:
    >>> from rocm_nb import LocalModel
    >>> with LocalModel("smollm2-135m") as model:  # doctest: +SKIP
    ...     for piece in model.stream("Write a haiku about GPUs", max_tokens=48):
    ...         print(piece, end="")

In a notebook, ``%load_ext rocm_nb`` adds the ``%rocm_*`` magics.
``rocm_nb.models()`` lists the GGUF files on this machine (the model
library); ``Client.models()`` is another thing: the models a running server
offers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rocm_nb.errors import (
    AmbiguousModel,
    BinaryNotFound,
    BuildError,
    GenerationError,
    GenerationTimeout,
    ImagesNotSupported,
    InvalidModel,
    ModelClosed,
    ModelNotFound,
    ModelNotStarted,
    ProjectorMismatch,
    RocmNbError,
    SchemaMismatch,
    ServerCrashed,
    ServerStartError,
    ServerStartTimeout,
    ServerUnavailable,
    StreamProtocolError,
    TextTooLong,
)

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from rocm_nb._lease import ModelState
    from rocm_nb.binary._build import install_server
    from rocm_nb.client import Client, connect
    from rocm_nb.client._batch import Prompt
    from rocm_nb.client.completion import Completion, ToolCall
    from rocm_nb.client.embeddings import search
    from rocm_nb.client.engines import Capabilities, ServerInfo
    from rocm_nb.client.logprobs import ContextUse, Progress, TokenPiece, TokenProb
    from rocm_nb.client.status import ServerStatus
    from rocm_nb.client.stream import AsyncTokenStream, Delta, TokenStream
    from rocm_nb.client.timings import Timings, Usage
    from rocm_nb.client.tool_loop import ToolRun
    from rocm_nb.hardware import GpuUsage, gpu_usage
    from rocm_nb.model import LocalModel
    from rocm_nb.modelfiles.fit import FitPlan, MemoryEstimate
    from rocm_nb.modelfiles.library import models
    from rocm_nb.notebook.chat import ChatPanel
    from rocm_nb.notebook.explore import NextTokenExplorer
    from rocm_nb.notebook.monitor import GpuMonitor, MonitorSample, ProcessUsage
    from rocm_nb.notebook.playground import SamplerPlayground
    from rocm_nb.notebook.reply_view import ReplyView
    from rocm_nb.notebook.token_view import TokenView
    from rocm_nb.router import LocalRouter, RouterChild

__version__ = "0.1.0"
"""The one source of the version: pyproject.toml reads it from here."""

__all__ = [
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


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext rocm_nb``: register the ``%rocm_*`` magics (IPython imported lazily).

    They need the notebook extra: ``pip install "rocm_nb[notebook]"``.
    """
    from rocm_nb.notebook.magics import register

    register(ipython)


_LAZY = {
    "AsyncTokenStream": "rocm_nb.client.stream",
    "Capabilities": "rocm_nb.client.engines",
    "ChatPanel": "rocm_nb.notebook.chat",
    "Client": "rocm_nb.client",
    "Completion": "rocm_nb.client.completion",
    "ContextUse": "rocm_nb.client.logprobs",
    "Delta": "rocm_nb.client.stream",
    "FitPlan": "rocm_nb.modelfiles.fit",
    "GpuMonitor": "rocm_nb.notebook.monitor",
    "GpuUsage": "rocm_nb.hardware",
    "LocalModel": "rocm_nb.model",
    "LocalRouter": "rocm_nb.router",
    "MemoryEstimate": "rocm_nb.modelfiles.fit",
    "ModelState": "rocm_nb._lease",
    "MonitorSample": "rocm_nb.notebook.monitor",
    "NextTokenExplorer": "rocm_nb.notebook.explore",
    "ProcessUsage": "rocm_nb.notebook.monitor",
    "Progress": "rocm_nb.client.logprobs",
    "Prompt": "rocm_nb.client._batch",
    "ReplyView": "rocm_nb.notebook.reply_view",
    "RouterChild": "rocm_nb.router",
    "SamplerPlayground": "rocm_nb.notebook.playground",
    "ServerInfo": "rocm_nb.client.engines",
    "ServerStatus": "rocm_nb.client.status",
    "Timings": "rocm_nb.client.timings",
    "TokenPiece": "rocm_nb.client.logprobs",
    "TokenProb": "rocm_nb.client.logprobs",
    "TokenStream": "rocm_nb.client.stream",
    "TokenView": "rocm_nb.notebook.token_view",
    "ToolCall": "rocm_nb.client.completion",
    "ToolRun": "rocm_nb.client.tool_loop",
    "Usage": "rocm_nb.client.timings",
    "connect": "rocm_nb.client",
    "gpu_usage": "rocm_nb.hardware",
    "install_server": "rocm_nb.binary._build",
    "models": "rocm_nb.modelfiles.library",
    "rpc_worker": "rocm_nb.server.rpc",
    "search": "rocm_nb.client.embeddings",
}
"""Where each public name lives, loaded on first use (PEP 562): ``import rocm_nb`` costs the error tree only.

Each name is the same object as in its home module (``rocm_nb.LocalModel is rocm_nb.model.LocalModel``);
``from rocm_nb import LocalModel`` imports what ``LocalModel`` needs, and nothing for the names not asked for.
The exceptions are imported at once: ``except rocm_nb.ServerCrashed`` must not import a thing.
"""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once found, an ordinary attribute
        return value
    raise AttributeError(f"module 'rocm_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
