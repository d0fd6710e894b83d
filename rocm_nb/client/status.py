"""``ServerStatus``: what is known about one server, for ``%rocm_status`` and anyone else.

:meth:`LocalModel.status() <rocm_nb.model.LocalModel.status>` and
:meth:`Client.status() <rocm_nb.client.Client.status>` return one;
:func:`rocm_nb.display.status_bundle` renders a table of them. A typed record
rather than a dict: a renamed field fails the type check instead of showing
"–" in a column.

Example:
    >>> ServerStatus(model="SmolLM2", file="smol.gguf", backend="cpu", state="running", pid=42).pid
    42
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerStatus"]


@dataclass(frozen=True)
class ServerStatus:
    """One server: which model, where it runs, what it costs, how fast it is.

    ``None`` means unknown or not applicable (a server this process does not
    own has no pid and no memory estimate here).

    Example:
        >>> s = ServerStatus(model="?", file="http://127.0.0.1:8080", backend="remote", state="unreachable")
        >>> s.state, s.rss_bytes
        ('unreachable', None)
    """

    model: str
    """The model's name (``general.name`` in its GGUF), or what the server says it offers."""
    file: str
    """The model's file name, or the URL of a server this process does not own."""
    backend: str
    """``rocm``, ``cuda``, ``vulkan``, ``cpu``, or ``remote`` for a server elsewhere."""
    state: str
    """``running``, ``crashed``, ``stopped``, ``closed``, ``unreachable``, or ``error`` (see :attr:`error`)."""
    pid: int | None = None
    port: int | None = None
    uptime_s: float | None = None
    load_s: float | None = None
    """How long loading the model took (s)."""
    ctx_size: int | None = None
    gpu_layers: int | None = None
    rss_bytes: int | None = None
    """The server process's measured resident memory."""
    estimate_bytes: int | None = None
    """What the load was estimated to need in host memory: the figure to hold against ``rss_bytes``."""
    estimate_vram_bytes: int | None = None
    """What the load was estimated to need on the GPU (``model.fit.estimate.vram``)."""
    offloaded_layers: int | None = None
    """Layers the server put on GPU devices, from its own log (``offloaded N/M layers to GPU``); ``None``:
    not reported (a CPU build, or a server that has not loaded)."""
    layers: int | None = None
    """The model's layers as the server counts them (the ``M`` of ``offloaded N/M``: the output layer is one)."""
    vram_bytes: int | None = None
    """Bytes the server allocated on GPU devices (model, KV cache and compute buffers), from its own log."""
    projected_vram_bytes: int | None = None
    """What the server's own ``--fit`` step projected for the GPU devices before loading, from its log."""
    vram_total_bytes: int | None = None
    """The total memory of the GPU devices the server uses, from detection (Vulkan: vulkaninfo's heaps)."""
    decode_tps: float | None = None
    """Average decode speed the server reports; ``None`` before the first generation."""
    rpc: tuple[str, ...] = ()
    """``host:port`` of the RPC workers the model is split over."""
    restored_tokens: int | None = None
    """Prompt tokens the server's start restored from the saved prompt cache, proved reused
    (:mod:`rocm_nb.server.warm`); ``None`` for a server that keeps none."""
    images: bool | None = None
    """Whether the model takes images (a projector is loaded, or the server says it takes them); ``None``: unknown."""
    error: str | None = None
    """Why the server's state could not be learnt or is bad (a proxy's HTML page, a crash), in one line."""
