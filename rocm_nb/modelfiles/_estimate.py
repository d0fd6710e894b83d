"""What a llama-server load needs in memory, from the GGUF header alone.

:func:`estimate` adds up what llama-server allocates for a model, from
:func:`~rocm_nb.modelfiles.catalog.read_info`'s metadata and tensor sizes:

* **weights**: the tensors' sizes in the file, split by layer. llama.cpp
  offloads the *last* ``gpu_layers`` layers, counting the output layer as the
  last one; the token embeddings always stay in host memory (a model with tied
  embeddings gets a copy of them on the GPU for its output layer).
* **KV cache**: layers × (K width + V width) × cells × bytes per element of
  the cache type, where a width is KV heads × head size
  (``attention.head_count_kv`` × ``attention.key_length``/``value_length``,
  or ``embedding_length / head_count``). With ``--parallel N`` the pinned
  llama-server keeps one KV stream per slot and *splits* ``-c`` between them
  (``kv_unified`` is false): each slot gets ``ctx_size / N`` cells rounded up
  to 256, so the cache grows with ``ctx_size``, not with ``ctx_size × N``.
* **compute buffer**: the activations of one 512-token micro-batch, measured
  against the buffer sizes llama-server logs for SmolLM2 and three synthetic
  llama-architecture GGUFs of other shapes (n_embd 576–2048, n_ff 1024–5632):
  ``ubatch × 4 B × (3 n_ff + 4 n_embd)`` plus an f16 attention mask of
  ``ubatch × cells per slot`` with flash attention; without it, the f32
  attention scores (``ubatch × cells per slot × heads``), an f32 mask and
  ``ubatch × 4 B × (5 n_embd + 2 KV width)``. Plus the logits buffer.
* **runtime**: a fixed 32 MiB of host memory for the program itself (code,
  vocabulary tables, threads, work buffers), measured from the server's RSS
  after its first prompt.

Embedding and reranking servers (``pooled``) compute every token of a
micro-batch as an output, and their micro-batch is a slot's whole context
(an input is embedded in one batch):

* a decoder with an output head (SmolLM2 with ``--embedding --pooling last``)
  computes the head's logits for every token, so its compute buffer is
  ``ubatch × n_vocab × 4 B`` plus ``ubatch × 4 B × 3 n_embd``: measured
  49.3, 98.8, 198.5 and 401.1 MiB at ``-ub`` 256, 512, 1024 and 2048 against
  49.7, 99.4, 198.8 and 397.5 MiB here;
* an encoder (BERT and the other architectures in :data:`ENCODER_ARCHS`, such
  as MiniLM) has no KV cache at all (llama.cpp's ``create_memory`` makes
  none: the server logs no KV buffer) and no output head; its compute buffer
  is ``ubatch × 4 B × (n_ff + 4 n_embd)``: measured 1.35, 2.75 and 5.76 MiB
  for MiniLM at ``-ub`` 128, 256 and 512 against 1.5, 3.0 and 6.0 here.

Mixture-of-experts and sliding-window models get the same formulas, so
their compute buffer and KV cache are only approximate (the KV cache is
overestimated for sliding-window layers: the safe side).

Measured here (CPU build, SmolLM2-135M Q4_1, flash attention ``auto``): the
RSS of a fresh server after one 600-token prompt against :func:`estimate`'s
total. The weights and KV cache match the buffer sizes llama-server logs to
the byte, the compute buffer to within 1 %::

    ctx   parallel  cache K/V    estimate   measured RSS  error
    2048  1         f16/f16      184.8 MiB  187.2 MiB    -1.3 %
    2048  2         f16/f16      184.0 MiB  186.7 MiB    -1.4 %
    4096  1         f16/f16      231.8 MiB  231.8 MiB    +0.0 %
    4096  2         f16/f16      230.0 MiB  232.1 MiB    -0.9 %
    8192  1         f16/f16      325.8 MiB  322.7 MiB    +1.0 %
    8192  2         f16/f16      322.0 MiB  322.6 MiB    -0.2 %
    8192  1         q8_0/q8_0    241.4 MiB  238.5 MiB    +1.2 %
    8192  2         q4_0/f16     257.3 MiB  258.1 MiB    -0.3 %

Two things make RSS differ from what a GPU would show. Without flash
attention (8192, 1: estimate 470.7 MiB, RSS 328.9 MiB) the attention scores'
buffer is allocated for a full context but only touched as far as a prompt
reaches: VRAM counts it whole, RSS does not. And llama-server keeps past
prompts' KV state in a host-RAM prompt cache (``--cache-ram``, up to 8 GiB by
default): RSS grows by about 13.6 MiB per distinct 600-token prompt here,
which is host memory, never VRAM, and not in the estimate.

**Image projectors** (``mmproj=``, :func:`estimate_projector`) add their
weights (the tensors' sizes in the file, exactly what llama-server logs as
the projector's model size) and a compute buffer for one image at the
projector's ``image_size``, which llama-server reserves at load. For a ViT of
``n`` patches (``(image_size / patch_size)²``), width ``E``, feed-forward
width ``F`` and ``H`` heads, with flash attention (``auto`` resolves to on):
``n × 4 B × (3 patch_size² + F + 2E)`` (the image's pixels, then the widest
layer); without it, the larger of that and the f32 attention scores,
``n² × H × 4 B + n × 4 B × 4E``. Measured against the buffer sizes
llama-server logs (``reserve_compute_meta``) for ``mlp`` projectors of four
shapes (tests/support/vision.py's writer)::

    image/patch  E    F     H   flash auto: estimate / logged   flash off: estimate / logged
    32/8         32   64    2       0.02 / 0.04 MiB                 0.02 / 0.04 MiB
    224/14       256  1024  4       2.07 / 1.83 MiB                 2.07 / 2.08 MiB
    336/14       512  2048  8       8.04 / 8.05 MiB                14.63 / 14.80 MiB
    512/16       768  3072  12     21.00 / 21.01 MiB               60.00 / 60.01 MiB

Other projector types build other graphs (a merger after the ViT, tiles
encoded one at a time), so for them the figure is the same ViT's and only
approximate. The projector runs on the GPU when any layer does (llama-server
offloads it by default), else in host memory.

Example:
    >>> from rocm_nb.modelfiles.catalog import read_info, resolve_model
    >>> info = read_info(resolve_model("smollm2-135m"))  # doctest: +SKIP
    >>> print(estimate(info, ctx_size=4096).summary())  # doctest: +SKIP
    about 232 MiB: weights 92 MiB, KV cache 90 MiB, compute 18 MiB, runtime 32 MiB (all in RAM)
    >>> MemoryEstimate(0, 31, 4096, 1, 0, 92 << 20, 0, 90 << 20, 0, 18 << 20, 32 << 20).total // 2**20
    232
"""

from __future__ import annotations

from dataclasses import dataclass

from rocm_nb._units import human_bytes
from rocm_nb.modelfiles.catalog import ModelInfo
from rocm_nb.modelfiles.projector import ProjectorInfo

__all__ = [
    "CACHE_TYPES",
    "DEFAULT_BATCH",
    "ENCODER_ARCHS",
    "FLASH_ATTN",
    "RUNTIME_BYTES",
    "UBATCH",
    "MemoryEstimate",
    "ProjectorEstimate",
    "Shape",
    "check_cache_options",
    "checked_shape",
    "estimate",
    "estimate_projector",
    "estimate_shape",
]

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
"""KV cache types the pinned llama-server accepts (``--cache-type-k/-v``)."""

FLASH_ATTN = ("on", "off", "auto")
"""Values of ``--flash-attn``."""

UBATCH = 512
"""llama-server's default micro-batch (``-ub``): the tokens one compute step holds."""

DEFAULT_BATCH = 2048
"""llama-server's default logical batch (``-b``); the micro-batch is never larger than it."""

ENCODER_ARCHS = frozenset({
    "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2", "jina-bert-v3", "eurobert",
    "gemma-embedding", "wavtokenizer-dec", "dream", "llada", "llada-moe", "rnd1",
})
"""Architectures for which the pinned llama.cpp allocates no KV cache (``llama_model::create_memory``)."""

RUNTIME_BYTES = 32 * 2**20
"""Host memory of the server program itself (measured RSS less weights, KV cache and buffers)."""

_KV_PAD = 256  # llama.cpp pads the context, and each slot's share of it, to 256 cells


def _row_bytes(cache_type: str, width: int) -> int:
    """Bytes of ``width`` elements of a cache type (whole quantisation blocks)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
    return -(-width // block) * type_size


def check_cache_options(info: ModelInfo, *, flash_attn: str | None = None, cache_type_k: str | None = None,
                        cache_type_v: str | None = None) -> None:
    """Raise ``ValueError`` for options llama-server would refuse for this model.

    Checks the names, that a quantised V cache has flash attention (llama.cpp
    needs it; ``"auto"`` turns it on), and that a quantised cache's block
    size divides the head size.

    Example:
        >>> check_cache_options(info, flash_attn="off", cache_type_v="q8_0")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        ValueError: a quantised V cache (cache_type_v='q8_0') needs flash attention ...
    """
    if flash_attn is not None and flash_attn not in FLASH_ATTN:
        raise ValueError(f"flash_attn={flash_attn!r} is not one of {', '.join(map(repr, FLASH_ATTN))} (or None "
                         "for the server's default, 'auto')")
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    head_k, head_v = _head_sizes(info)
    for which, value, head in (("k", cache_type_k, head_k), ("v", cache_type_v, head_v)):
        if value is None:
            continue
        if value not in CACHE_TYPES:
            raise ValueError(f"cache_type_{which}={value!r} is not a KV cache type llama-server knows; "
                             f"use one of {', '.join(CACHE_TYPES)}")
        block = GGML_QUANT_SIZES[GGMLQuantizationType[value.upper()]][0]
        if head and head % block:
            raise ValueError(f"cache_type_{which}={value!r} stores blocks of {block} values, which do not divide "
                             f"{info.name}'s head size {head}; use f16, or a type whose block size divides it")
    if cache_type_v not in (None, "f32", "f16", "bf16") and flash_attn == "off":
        raise ValueError(f"a quantised V cache (cache_type_v={cache_type_v!r}) needs flash attention, which "
                         "flash_attn='off' turns off: use flash_attn='on' or 'auto', or cache_type_v='f16'")


def _head_sizes(info: ModelInfo) -> tuple[int, int]:
    """(K, V) head size; 0 for a model without attention metadata."""
    fallback = info.embedding_length // info.head_count if info.embedding_length and info.head_count else 0
    return info.key_length or fallback, info.value_length or fallback


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a model, computed once per :func:`~rocm_nb.modelfiles.fit.plan` (see
    :func:`checked_shape`).

    Example:
        >>> Shape((10, 10), 5, 3, 0, 64, 256, 100, 4, 64, 64).layer_bytes
        (10, 10)
    """

    layer_bytes: tuple[int, ...]  # the repeating layers' weights
    input_bytes: int  # token embeddings: always in host memory
    output_bytes: int  # output layer (norm, head) and other tensors outside the layers
    tied_bytes: int  # the output head's copy of the embeddings when they are tied
    n_embd: int
    n_ff: int
    n_vocab: int
    n_head: int
    k_width: int  # KV heads × K head size
    v_width: int
    encoder: bool = False  # an architecture with no KV cache and no output head (ENCODER_ARCHS)

    @classmethod
    def of(cls, info: ModelInfo) -> Shape:
        """The layers' weights and the widths of ``info``, from its tensors and attention metadata."""
        n_layer = info.block_count or 0
        layers = [0] * n_layer
        input_bytes = output_bytes = 0
        n_ff = n_vocab = 0
        has_head = False
        for tensor in info.tensors:
            index = tensor.layer
            if index is not None and index < n_layer:
                layers[index] += tensor.nbytes
                if tensor.name.endswith((".ffn_up.weight", ".ffn_gate.weight")):
                    n_ff = max(n_ff, tensor.shape[1] if len(tensor.shape) > 1 else 0)
            elif tensor.name.startswith("token_embd."):
                input_bytes += tensor.nbytes
                if tensor.name == "token_embd.weight" and len(tensor.shape) > 1:
                    n_vocab = tensor.shape[1]
            else:
                output_bytes += tensor.nbytes
                has_head = has_head or tensor.name == "output.weight"
        n_embd = info.embedding_length or 0
        head_k, head_v = _head_sizes(info)
        kv_heads = info.head_count_kv or info.head_count or 0
        encoder = info.architecture in ENCODER_ARCHS
        return cls(
            layer_bytes=tuple(layers), input_bytes=input_bytes, output_bytes=output_bytes,
            tied_bytes=0 if has_head or encoder else input_bytes, n_embd=n_embd, n_ff=n_ff or 4 * n_embd,
            n_vocab=n_vocab, n_head=info.head_count or 0, k_width=0 if encoder else kv_heads * head_k,
            v_width=0 if encoder else kv_heads * head_v, encoder=encoder,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """What a llama-server load needs, split between GPU memory (VRAM) and host RAM.

    ``gpu_layers`` counts the output layer as a layer (``layers`` =
    repeating layers + 1), as ``-ngl`` does. ``ctx_size`` is the number of KV
    cells llama.cpp allocates (rounded up per slot).

    Example:
        >>> e = MemoryEstimate(0, 31, 4096, 1, 0, 92 << 20, 0, 90 << 20, 0, 18 << 20, 32 << 20)
        >>> e.total // 2**20, e.vram
        (232, 0)
    """

    gpu_layers: int
    layers: int
    ctx_size: int
    parallel: int
    weights_vram: int
    weights_ram: int
    kv_vram: int
    kv_ram: int
    compute_vram: int
    compute_ram: int
    runtime_ram: int

    @property
    def vram(self) -> int:
        """Bytes on the GPU."""
        return self.weights_vram + self.kv_vram + self.compute_vram

    @property
    def ram(self) -> int:
        """Bytes in host memory (what the server process's RSS shows on a CPU build)."""
        return self.weights_ram + self.kv_ram + self.compute_ram + self.runtime_ram

    @property
    def total(self) -> int:
        """Bytes in all."""
        return self.vram + self.ram

    def summary(self) -> str:
        """One line: the total and its parts.

        Example:
            >>> MemoryEstimate(0, 31, 4096, 1, 0, 92 << 20, 0, 90 << 20, 0, 18 << 20, 32 << 20).summary()
            'about 232 MiB: weights 92 MiB, KV cache 90 MiB, compute 18 MiB, runtime 32 MiB (all in RAM)'
        """
        parts = (f"weights {human_bytes(self.weights_vram + self.weights_ram)}, "
                 f"KV cache {human_bytes(self.kv_vram + self.kv_ram)}, "
                 f"compute {human_bytes(self.compute_vram + self.compute_ram)}, "
                 f"runtime {human_bytes(self.runtime_ram)}")
        where = ("all in RAM" if not self.vram
                 else f"{human_bytes(self.vram)} on the GPU, {human_bytes(self.ram)} in RAM")
        return f"about {human_bytes(self.total)}: {parts} ({where})"


def estimate_shape(shape: Shape, *, ctx_size: int, parallel: int, gpu_layers: int, cache_type_k: str,
                   cache_type_v: str, flash: bool, ubatch: int, pooled: bool = False) -> MemoryEstimate:
    """:func:`estimate` for a model's :class:`Shape`, with ``flash`` the flash attention llama-server will use.

    Example:
        >>> e = estimate_shape(Shape((2 << 20,) * 4, 1 << 20, 1 << 20, 0, 64, 256, 100, 4, 64, 64), ctx_size=512,
        ...                    parallel=1, gpu_layers=2, cache_type_k="f16", cache_type_v="f16", flash=True, ubatch=512)
        >>> e.layers, e.weights_vram // 2**20, e.weights_ram // 2**20
        (5, 3, 7)
    """
    n_layer = len(shape.layer_bytes)
    layers = n_layer + 1
    ngl = max(0, min(gpu_layers, layers))
    first_gpu = layers - ngl  # llama.cpp offloads the last layers; index n_layer is the output layer
    on_gpu = [i >= first_gpu for i in range(n_layer)]
    output_on_gpu = ngl > 0

    weights_vram = sum(b for b, g in zip(shape.layer_bytes, on_gpu, strict=True) if g)
    weights_ram = shape.input_bytes + sum(b for b, g in zip(shape.layer_bytes, on_gpu, strict=True) if not g)
    if output_on_gpu:
        weights_vram += shape.output_bytes + shape.tied_bytes
    else:
        weights_ram += shape.output_bytes

    n_ctx = -(-ctx_size // _KV_PAD) * _KV_PAD
    per_slot = -(-(n_ctx // parallel) // _KV_PAD) * _KV_PAD
    cells = per_slot * parallel
    kv_layer = (_row_bytes(cache_type_k, shape.k_width) + _row_bytes(cache_type_v, shape.v_width)) * cells
    kv_vram = kv_layer * sum(on_gpu)
    kv_ram = kv_layer * (n_layer - sum(on_gpu))

    tokens = min(n_ctx, ubatch)
    if shape.encoder:
        compute = tokens * 4 * (shape.n_ff + 4 * shape.n_embd)
    elif flash:
        compute = tokens * 4 * (3 * shape.n_ff + 4 * shape.n_embd) + tokens * per_slot * 2
    else:
        attention = tokens * per_slot * 4 * (shape.n_head + 1) + tokens * 4 * (5 * shape.n_embd + 2 * shape.k_width)
        compute = max(attention, tokens * 4 * (3 * shape.n_ff + 4 * shape.n_embd) + tokens * per_slot * 4)
    if pooled and not shape.encoder:  # every token is an output: the head's logits for the whole micro-batch
        compute = max(compute, tokens * 4 * (shape.n_vocab + 3 * shape.n_embd))
    logits = shape.n_vocab * 4 * parallel  # one row of logits per slot, kept in host memory
    if ngl == 0:
        compute_vram, compute_ram = 0, compute + logits
    elif ngl < layers:
        compute_vram, compute_ram = compute, compute + logits
    else:  # the host only embeds the input tokens
        compute_vram, compute_ram = compute, tokens * 4 * shape.n_embd + logits
    return MemoryEstimate(
        gpu_layers=ngl, layers=layers, ctx_size=cells, parallel=parallel,
        weights_vram=weights_vram, weights_ram=weights_ram, kv_vram=kv_vram, kv_ram=kv_ram,
        compute_vram=compute_vram, compute_ram=compute_ram, runtime_ram=RUNTIME_BYTES,
    )


def checked_shape(info: ModelInfo, ctx_size: int, parallel: int, flash_attn: str | None, cache_type_k: str,
                  cache_type_v: str) -> Shape:
    """``info``'s :class:`Shape`, once the options are checked (:func:`check_cache_options`, positive sizes).

    Example:
        >>> checked_shape(info, 0, 1, None, "f16", "f16")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        ValueError: ctx_size and parallel must be positive, got 0 and 1
    """
    check_cache_options(info, flash_attn=flash_attn, cache_type_k=cache_type_k, cache_type_v=cache_type_v)
    if ctx_size <= 0 or parallel <= 0:
        raise ValueError(f"ctx_size and parallel must be positive, got {ctx_size} and {parallel}")
    return Shape.of(info)


def estimate(
    info: ModelInfo,
    *,
    ctx_size: int,
    parallel: int = 1,
    gpu_layers: int = 0,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    flash_attn: str | None = None,
    ubatch: int = UBATCH,
    pooled: bool = False,
) -> MemoryEstimate:
    """Estimate the memory llama-server needs to load ``info`` with these options.

    ``gpu_layers`` is ``-ngl`` (the output layer counts as one);
    ``flash_attn`` ``None`` means the server's default, ``auto``, which the
    CPU, CUDA, ROCm and Vulkan backends all resolve to on. ``ubatch`` is the
    micro-batch (``-ub``, no larger than ``-b``); ``pooled`` an embedding or
    reranking server (see the module docstring).

    Example:
        >>> e = estimate(info, ctx_size=4096, parallel=2, gpu_layers=31)  # doctest: +SKIP
        >>> e.vram // 2**20, e.ram // 2**20  # doctest: +SKIP
        (186, 28)
    """
    shape = checked_shape(info, ctx_size, parallel, flash_attn, cache_type_k, cache_type_v)
    return estimate_shape(shape, ctx_size=ctx_size, parallel=parallel, gpu_layers=gpu_layers,
                          cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                          flash=flash_attn != "off", ubatch=ubatch, pooled=pooled)



@dataclass(frozen=True)
class ProjectorEstimate:
    """What an image projector adds to a load: its weights and its compute buffer, on the GPU or in RAM.

    Example:
        >>> ProjectorEstimate(weights=100 << 20, compute=21 << 20, on_gpu=False).summary()
        'about 121 MiB: weights 100 MiB, compute 21 MiB (in RAM)'
    """

    weights: int
    compute: int
    on_gpu: bool

    @property
    def total(self) -> int:
        """Bytes in all."""
        return self.weights + self.compute

    @property
    def vram(self) -> int:
        """Bytes on the GPU."""
        return self.total if self.on_gpu else 0

    @property
    def ram(self) -> int:
        """Bytes in host memory."""
        return 0 if self.on_gpu else self.total

    def summary(self) -> str:
        """One line: the total and its parts, and where they are."""
        where = "on the GPU" if self.on_gpu else "in RAM"
        return (f"about {human_bytes(self.total)}: weights {human_bytes(self.weights)}, "
                f"compute {human_bytes(self.compute)} ({where})")


def estimate_projector(projector: ProjectorInfo, *, on_gpu: bool, flash_attn: str | None = None) -> ProjectorEstimate:
    """The memory an image projector needs (the formula and its measurements: the module docstring).

    Example:
        >>> from pathlib import Path
        >>> p = ProjectorInfo(Path("m.gguf"), "mlp", vision=True, audio=False, image_size=512, patch_size=16,
        ...                   file_size=0, embedding_length=768, feed_forward_length=3072, head_count=12)
        >>> estimate_projector(p, on_gpu=False).compute // 2**20, estimate_projector(p, on_gpu=False,
        ...                                                                         flash_attn="off").compute // 2**20
        (21, 60)
    """
    patch = projector.patch_size or 14
    side = (projector.image_size or 0) // patch
    n = side * side
    width = projector.embedding_length or 0
    ff = projector.feed_forward_length or 4 * width
    compute = n * 4 * (3 * patch * patch + ff + 2 * width)
    if flash_attn == "off":
        compute = max(compute, n * n * (projector.head_count or 1) * 4 + n * 4 * 4 * width)
    return ProjectorEstimate(weights=projector.weights_bytes, compute=compute, on_gpu=on_gpu)
