"""What ``LocalModel``'s constructor options mean: the fit plan and the server configuration they give.

``LocalModel(...)`` takes user-facing options (``gpu_layers="auto"``,
``flash_attn=True``, one ``cache_type`` for K and V, a context size that may
be left out); :func:`plan_server` checks them, asks :func:`rocm_nb.modelfiles.fit.plan_load`
what fits on this machine, and turns the answer into the
:class:`~rocm_nb.server.ServerConfig` that decides which server runs.

Embedding and reranking servers (:func:`server_mode`) get their own flags and
context here too.

Speculative decoding (``speculative=``). llama-server can decode several tokens per step by *speculation*: something
cheap drafts the next few tokens, and the model checks them all in one batch,
keeping the longest prefix it agrees with and its own next token. Each kept
token is the token the model itself chose (greedy) or sampled (the server
verifies drafts with the request's sampler), so speculation changes the
speed, not the output's distribution. Greedy text is identical with and
without it on ``tests/test_speculative.py``'s prompts for every mode; over
long replies it can differ after a near-tie, because a batch of tokens is
computed with slightly different rounding than one token at a time
(``benchmarks/README.md`` counts how often).

``speculative=`` takes:

* ``"off"``: no speculation (llama-server's own default).
* ``"ngram"``: drafts from n-grams the conversation has already seen
  (:data:`NGRAM_FLAGS`), with no second model. It pays when the output repeats
  what came before (a code block rewritten with one change, a list given again
  as JSON); ``benchmarks/README.md`` has the measurements per workload and
  why this type and these sizes were chosen.
* a draft model: a ``.gguf`` path or catalogue name of a smaller model with the
  same vocabulary (``--spec-draft-model``), with ``draft_gpu_layers`` of its
  layers on the GPU (default: all on a GPU backend, none on the CPU). Its
  memory is counted in ``model.fit``.

The default is :data:`DEFAULT_SPECULATIVE`; docs/speculative.md says why.

Example:
    >>> kv_options(True, "q8_0", None, None)
    ('on', 'q8_0', 'q8_0')
    >>> speculation_flags("ngram", None, None)
    ('--spec-type', 'ngram-mod')
    >>> speculation_flags("off", None, None)
    ()
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from rocm_nb._units import parse_bytes, positive_int
from rocm_nb.binary import ServerBinary
from rocm_nb.hardware import Hardware, select_device
from rocm_nb.hardware._hsa import VISIBILITY_ENV, server_env
from rocm_nb.hardware._unified import UnifiedMemory, check_unified, decide
from rocm_nb.modelfiles.catalog import ModelInfo, read_info, resolve_model
from rocm_nb.modelfiles.fit import FitPlan, plan_load
from rocm_nb.server import ServerConfig

__all__ = [
    "DEFAULT_CTX_CAP",
    "DEFAULT_SPECULATIVE",
    "NGRAM_FLAGS",
    "POOLINGS",
    "REPORT_VERBOSITY",
    "SPECULATIVE_MODES",
    "context_size",
    "device_options",
    "draft_spec",
    "kv_options",
    "plan_server",
    "server_mode",
    "speculation_flags",
]

DEFAULT_CTX_CAP = 8192
"""Default context size cap: min(trained context, 8192) keeps the KV cache modest."""

REPORT_VERBOSITY = 4
"""``-lv`` for servers on a GPU build: the level at which llama-server logs its offloaded layers and its buffers
per device (what ``model.status()`` and the monitor read; :mod:`rocm_nb.binary._report`)."""


def device_options(hardware: Hardware, binary: ServerBinary, device: int | None, gpu_memory: int | str | None,
                   env: Mapping[str, str]) -> tuple[Hardware, int | None]:
    """The hardware llama-server will use (only GPU ``device``, if given) and the ``gpu_memory`` cap in bytes.

    Warns (:class:`UserWarning`) when the chosen devices include a software
    Vulkan device (it runs on the CPU, slower than the CPU backend) and when
    ``gpu_memory`` cannot apply (a CPU build); refuses a ``device`` that your
    environment's visibility variable contradicts.

    Example:
        >>> from rocm_nb.hardware import GPU
        >>> lavapipe = GPU(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "", "mesa", 2**31, 0, False, vulkan_type="software")
        >>> hw = Hardware("vulkan", (lavapipe,), "0", ())
        >>> binary = ServerBinary(Path("llama-server"), "1", "vulkan", "cache", False)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     chosen, cap = device_options(hw, binary, 0, "64MiB", {})
        >>> cap, str(caught[0].message)[:60]
        (67108864, 'Vulkan device 0, llvmpipe (LLVM 15.0.6, 256 bits), is a soft')
    """
    cap = None if gpu_memory is None else parse_bytes("gpu_memory", gpu_memory)
    if cap is not None and binary.backend == "cpu":
        warnings.warn(f"gpu_memory={gpu_memory!r} has no effect: {binary.path} is a CPU build, so nothing goes to a "
                      "GPU", UserWarning, stacklevel=3)
    chosen = select_device(hardware, device)
    if device is not None:
        for name in VISIBILITY_ENV.get(hardware.backend, ()):
            if name in env and env[name] != str(device):
                raise ValueError(f"device={device} contradicts {name}={env[name]} in your environment: drop one of "
                                 "them (that variable already picks the GPUs llama-server sees)")
    if binary.backend == "vulkan" and hardware.backend == "vulkan":
        for gpu in chosen.visible_gpus:
            if gpu.device_type == "software":
                warnings.warn(f"Vulkan device {gpu.index}, {gpu.name}, is a software device (Mesa's lavapipe runs "
                              "Vulkan on the CPU): expect about a second per token, slower than the CPU backend; it "
                              "proves the GPU path, it does not speed anything up", UserWarning, stacklevel=3)
    return chosen, cap


SPECULATIVE_MODES = ("off", "ngram")
"""The modes named by a word; anything else given to ``speculative=`` is a draft model."""

DEFAULT_SPECULATIVE = "off"
"""``LocalModel``'s default, chosen by measurement (``benchmarks/README.md``, "Speculative decoding")."""

NGRAM_FLAGS: tuple[str, ...] = ("--spec-type", "ngram-mod")
"""What ``speculative="ngram"`` adds to llama-server's command line: the n-gram type that measured best."""


def draft_spec(speculative: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """The draft model ``speculative`` names, or ``None`` for a mode (``"off"``, ``"ngram"``, ``None``).

    Example:
        >>> draft_spec("ngram"), draft_spec(None), draft_spec("tiny.gguf")
        (None, None, 'tiny.gguf')
        >>> draft_spec("")
        Traceback (most recent call last):
        ...
        ValueError: speculative= takes 'off', 'ngram', or a draft model's .gguf path or catalogue name; got ''
    """
    if speculative is None or (isinstance(speculative, str) and speculative in SPECULATIVE_MODES):
        return None
    if not os.fspath(speculative):
        raise ValueError("speculative= takes 'off', 'ngram', or a draft model's .gguf path or catalogue name; "
                         f"got {speculative!r}")
    return speculative


def speculation_flags(speculative: str | os.PathLike[str] | None, draft: Path | None,
                      draft_gpu_layers: int | None) -> tuple[str, ...]:
    """llama-server's flags for a speculation mode, or for ``draft`` (the resolved draft model's path).

    Example:
        >>> speculation_flags("tiny.gguf", Path("/m/tiny.gguf"), 0)
        ('--spec-type', 'draft-simple', '--spec-draft-model', '/m/tiny.gguf', '--spec-draft-ngl', '0')
    """
    if draft is not None:
        layers = ("--spec-draft-ngl", str(draft_gpu_layers)) if draft_gpu_layers is not None else ()
        return ("--spec-type", "draft-simple", "--spec-draft-model", str(draft), *layers)
    if speculative == "ngram":
        return NGRAM_FLAGS
    return ()


POOLINGS = ("none", "mean", "cls", "last", "rank")
"""llama-server's ``--pooling`` choices; ``None`` keeps the model's own."""


def server_mode(config: ServerConfig, *, embedding: bool, pooling: str | None, reranking: bool,
                ctx_given: bool) -> ServerConfig:
    """``config`` for an embedding or reranking server (``LocalModel(embedding=, pooling=, reranking=)``).

    Each slot of such a server gets the model's whole default context unless
    ``ctx_size`` was given (a text is embedded in one slot), and the batch
    sizes are raised to a slot's context, since an embedding is computed in
    one batch.

    Example:
        >>> from pathlib import Path
        >>> from rocm_nb.server import ServerConfig
        >>> config = ServerConfig(Path("s"), Path("m.gguf"), 512, parallel=2)
        >>> server_mode(config, embedding=True, pooling="mean", reranking=False, ctx_given=False).argv(1)[-7:]
        ['--embedding', '--pooling', 'mean', '-ub', '512', '-b', '512']
    """
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (or None for the model's own), got {pooling!r}")
    if embedding and reranking:
        raise ValueError("a server does embeddings or reranking, not both: use two LocalModels")
    if pooling is not None and not embedding:
        raise ValueError("pooling= applies to embedding servers: add embedding=True")
    if not (embedding or reranking):
        return config
    ctx = config.ctx_size if ctx_given else config.ctx_size * config.parallel
    return replace(config, ctx_size=ctx, embedding=embedding, pooling=pooling, reranking=reranking)


def kv_options(flash_attn: str | bool | None, cache_type: str | None, cache_type_k: str | None,
               cache_type_v: str | None) -> tuple[str | None, str | None, str | None]:
    """``(flash_attn, cache_type_k, cache_type_v)`` as llama-server takes them.

    ``True``/``False`` mean ``"on"``/``"off"``; ``cache_type`` sets both
    caches, and giving it with one of the others is a :class:`ValueError`.

    Example:
        >>> kv_options(None, None, "q8_0", None)
        (None, 'q8_0', None)
        >>> kv_options(False, "f16", "q8_0", None)
        Traceback (most recent call last):
        ...
        ValueError: give cache_type (both K and V) or cache_type_k/cache_type_v, not both
    """
    flash = ("on" if flash_attn else "off") if isinstance(flash_attn, bool) else flash_attn
    if cache_type is not None and (cache_type_k is not None or cache_type_v is not None):
        raise ValueError("give cache_type (both K and V) or cache_type_k/cache_type_v, not both")
    cache_k, cache_v = (cache_type, cache_type) if cache_type is not None else (cache_type_k, cache_type_v)
    return flash, cache_k, cache_v


def context_size(info: ModelInfo, requested: int | None) -> int:
    """The context size to plan for: ``requested``, checked, or min(trained context, :data:`DEFAULT_CTX_CAP`).

    A context beyond what the model was trained for is a :class:`ValueError`.

    Example:
        >>> context_size(read_info("SmolLM2-135M-Instruct.Q4_1.gguf"), None)  # doctest: +SKIP
        8192
    """
    trained = info.context_length
    if requested is None:
        return min(trained or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
    positive_int("ctx_size", requested)
    if trained is not None and requested > trained:
        raise ValueError(
            f"ctx_size={requested} is beyond what {info.name} was trained for ({trained}); "
            f"use ctx_size={trained} or less (quality collapses past the trained length)"
        )
    return requested


def plan_server(
    info: ModelInfo,
    path: Path,
    binary: ServerBinary,
    hardware: Hardware,
    *,
    ctx_size: int | None,
    gpu_layers: int | Literal["auto"] | None,
    parallel: int,
    extra_args: tuple[str, ...],
    env: Mapping[str, str] | None,
    host: str,
    rpc: Sequence[str],
    hsa_override: str | None,
    flash_attn: str | bool | None,
    cache_type: str | None,
    cache_type_k: str | None,
    cache_type_v: str | None,
    unified_memory: UnifiedMemory = "auto",
    speculative: str | os.PathLike[str] | None = None,
    draft_gpu_layers: int | None = None,
    gpu_memory: int | None = None,
) -> tuple[FitPlan, ServerConfig]:
    """The fit plan and the server configuration for ``LocalModel``'s options (see its docstring).

    ``gpu_layers`` given as a number is used as it is; ``None``/``"auto"``
    takes the plan's choice. The server's environment is what the hardware
    needs (``hsa_override`` included, and on an integrated GPU what
    ``unified_memory`` needs: see :mod:`rocm_nb.hardware._unified`) under ``env``, which wins.
    ``speculative`` names the speculation mode or a draft model
    (:mod:`rocm_nb._options`): a draft model is resolved (which may
    download it) and read here, and its memory goes into the fit plan, with
    ``draft_gpu_layers`` of its layers on the GPU (default: all; none on a CPU
    build, which gets no ``--spec-draft-ngl``). ``gpu_memory`` (bytes, from
    :func:`device_options`) caps the GPU memory the plan may use. A GPU
    build's server logs at :data:`REPORT_VERBOSITY`.

    Example:
        >>> fit, config = plan_server(info, path, binary, detect(), ctx_size=None, gpu_layers="auto",
        ...                           parallel=1, extra_args=(), env=None, host="127.0.0.1", rpc=(),
        ...                           hsa_override=None, flash_attn=None, cache_type=None,
        ...                           cache_type_k=None, cache_type_v=None)  # doctest: +SKIP
    """
    flash, cache_k, cache_v = kv_options(flash_attn, cache_type, cache_type_k, cache_type_v)
    if gpu_memory is not None and gpu_layers not in (None, "auto"):
        raise ValueError(f"give gpu_layers= or gpu_memory=, not both: gpu_memory={gpu_memory!r} decides how many "
                         f"layers fit, gpu_layers={gpu_layers!r} fixes them")
    if draft_gpu_layers is not None and (isinstance(draft_gpu_layers, bool) or not isinstance(draft_gpu_layers, int)
                                         or draft_gpu_layers < 0):
        raise ValueError(f"draft_gpu_layers must be an integer ≥ 0 (or None: all on a GPU), got {draft_gpu_layers!r}")
    named_draft = draft_spec(speculative)
    if named_draft is None and draft_gpu_layers is not None:
        raise ValueError("draft_gpu_layers needs a draft model: pass speculative='path/to/draft.gguf' "
                         "(or a catalogue name)")
    draft_path = None if named_draft is None else resolve_model(named_draft)
    draft_info = None if draft_path is None else read_info(draft_path)
    chosen_layers = None if gpu_layers is None or gpu_layers == "auto" else int(gpu_layers)
    backend = "rpc" if rpc else binary.backend
    unified = check_unified(unified_memory)
    fit = plan_load(
        info, hardware, backend, unified_memory=unified,
        ctx_size=context_size(info, ctx_size), parallel=positive_int("parallel", parallel),
        gpu_layers=chosen_layers,
        shrink_ctx=ctx_size is None, flash_attn=flash, cache_type_k=cache_k, cache_type_v=cache_v,
        draft=draft_info, draft_gpu_layers=draft_gpu_layers, gpu_memory=gpu_memory,
    )
    draft_layers = None
    if fit.draft is not None and binary.backend != "cpu":
        draft_layers = fit.draft.gpu_layers
    config = ServerConfig(
        binary=binary.path,
        model=path,
        ctx_size=fit.ctx_size,
        gpu_layers=fit.gpu_layers if chosen_layers is None else chosen_layers,
        parallel=parallel,
        extra_args=extra_args,
        env=tuple(sorted({
            **decide(hardware, backend, unified).env,
            **server_env(hardware, {**os.environ, **(env or {})}, hsa_override=hsa_override),
            **(env or {}),
        }.items())),
        host=host,
        rpc=tuple(rpc),
        flash_attn=flash,
        cache_type_k=cache_k,
        cache_type_v=cache_v,
        speculative=speculation_flags(speculative, draft_path, draft_layers),
        log_verbosity=None if binary.backend == "cpu" else REPORT_VERBOSITY,
    )
    return fit, config
