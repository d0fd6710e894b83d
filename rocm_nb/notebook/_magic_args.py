"""The typed arguments of the ``%rocm_*`` magics, and the generation options they set.

:func:`rocm_nb.notebook.magics.parse_args` parses a magic's line into one of these
(``%rocm_load`` → :class:`LoadArgs`, ``%%rocm_generate`` → :class:`GenerateArgs`, …);
:func:`options_from` turns the sampling arguments into ``Options`` for a
model or a chat panel.

Example:
    >>> args = GenerateArgs(max_tokens=64, temperature=0.0, system="Be brief.")
    >>> options_from(args)
    {'max_tokens': 64, 'temperature': 0.0}
    >>> args.messages("Hi")[0]
    {'role': 'system', 'content': 'Be brief.'}
"""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass
from typing import Any

from rocm_nb._extras import needs_extra
from rocm_nb._options import DEFAULT_SPECULATIVE
from rocm_nb.client.completion import Message
from rocm_nb.client.logprobs import MAX_TOP_LOGPROBS
from rocm_nb.client.request import Options, check_options
from rocm_nb.hardware import Backend
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL
from rocm_nb.notebook._format import FORMATS, Format

with needs_extra("notebook"):
    from IPython.core.error import UsageError

__all__ = ["ChatArgs", "GenerateArgs", "LoadArgs", "ModelsArgs", "SamplingArgs", "StopArgs", "options_from"]


@dataclass(frozen=True, kw_only=True)
class SamplingArgs:
    """The sampling options a magic takes; ``None`` leaves the default (the panel's, or the server's).

    Example:
        >>> options_from(SamplingArgs(temperature=0.0, stop=["\\n"]))
        {'temperature': 0.0, 'stop': ['\\n']}
    """

    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: list[str] | None = None


@dataclass(frozen=True, kw_only=True)
class GenerateArgs(SamplingArgs):
    """``%%rocm_generate``'s options, typed (see ``%%rocm_generate?``).

    ``alias`` names a loaded model (``%rocm_load ... --alias NAME``; default:
    the current one).

    Example:
        >>> args = GenerateArgs(raw=True, max_tokens=8)
        >>> args.raw, args.max_tokens, args.format, args.alias
        (True, 8, 'markdown', None)
        >>> GenerateArgs(raw=True, system="Be brief.")
        Traceback (most recent call last):
        ...
        IPython.core.error.UsageError: --system needs chat mode; drop --raw
    """

    alias: str | None = None
    system: str | None = None
    raw: bool = False
    out: str | None = None
    no_stream: bool = False
    json_schema: str | None = None
    format: Format = FORMATS[0]
    probs: int | None = None
    """``--probs [K]``: shade each token by its probability, with its top-K alternatives (default
    :data:`~rocm_nb.client.logprobs.DEFAULT_TOP_LOGPROBS`)."""
    image: list[str] | None = None
    """``--image NAME`` (repeatable): variables holding images to send with the prompt (a vision model)."""

    def __post_init__(self) -> None:
        if self.raw and self.system:
            raise UsageError("--system needs chat mode; drop --raw")
        if self.raw and self.image:
            raise UsageError("--image needs chat mode (images go in the user's message); drop --raw")
        if self.probs is not None and not 1 <= self.probs <= MAX_TOP_LOGPROBS:
            raise UsageError(f"--probs takes 1 to {MAX_TOP_LOGPROBS} alternatives per token, got {self.probs}")
        if self.probs is not None and self.format in ("json", "code"):
            raise UsageError(f"--probs shows the reply's tokens; it does not go with --format {self.format}")
        if self.out is not None:
            _check_variable_name(self.out)

    def messages(self, prompt: str) -> list[Message]:
        """The chat messages for ``prompt``: the system prompt (if any), then the user's.

        Example:
            >>> GenerateArgs(system="Be brief.").messages("Hi")
            [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
        """
        system: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": prompt}]


_IPYTHON_NAMES = {
    "In": "the list of this session's inputs", "Out": "the dict of this session's outputs",
    "_ih": "the list of inputs", "_oh": "the dict of outputs", "_dh": "the list of working directories",
    "_": "the last output", "__": "the output before the last", "___": "the third-last output",
    "_i": "the last input", "_ii": "the input before the last", "_iii": "the third-last input",
    "exit": "the command that ends the session", "quit": "the command that ends the session",
    "get_ipython": "the function that returns the shell",
}
"""The names IPython keeps in the user's namespace, and what each holds: ``--out`` must not replace them."""
_NUMBERED = re.compile(r"_i?\d+")
"""``_5`` and ``_i5``: IPython's output and input of cell 5."""


def _check_variable_name(name: str) -> None:
    """Refuse an ``--out`` name that is no Python variable name, or that would replace what Python or IPython needs.

    Refused: keywords, built-ins (``print``), dunder names (``__builtins__``,
    ``__name__``: replacing ``__builtins__`` breaks every later cell until the
    kernel restarts) and the names IPython keeps in the namespace (``In``,
    ``Out``, ``_ih``, ``_oh``, ``_dh``, ``_``, ``__``, ``___``, ``_i``,
    ``_5``, ``_i5``, ``exit``, ``quit``, ``get_ipython``).

    Example:
        >>> _check_variable_name("reply")
        >>> _check_variable_name("print")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        IPython.core.error.UsageError: --out print would hide Python's built-in print; choose another name, ...
        >>> _check_variable_name("In")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        IPython.core.error.UsageError: --out In would replace IPython's In (the list of this session's inputs); ...
    """
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--out {name!r} is not a Python variable name; use letters, digits and _ (reply_1)")
    if name.startswith("__") and name.endswith("__") and name.strip("_"):
        raise UsageError(f"--out {name}: Python keeps __dunder__ names for itself (replacing __builtins__ breaks "
                         "every later cell until the kernel restarts); choose another name, such as reply")
    if name in _IPYTHON_NAMES or _NUMBERED.fullmatch(name):
        held = _IPYTHON_NAMES.get(name) or ("an input" if name.startswith("_i") else "an output") + " of a cell"
        raise UsageError(f"--out {name} would replace IPython's {name} ({held}); choose another name, such as reply")
    if hasattr(builtins, name):
        raise UsageError(f"--out {name} would hide Python's built-in {name}; choose another name, such as reply")


@dataclass(frozen=True, kw_only=True)
class ChatArgs(SamplingArgs):
    """``%rocm_chat``'s options, typed: the panel's starting settings.

    Example:
        >>> ChatArgs(alias="small", system="Be brief.", seed=3)
        ChatArgs(max_tokens=None, temperature=None, seed=3, stop=None, alias='small', system='Be brief.')
    """

    alias: str | None = None
    system: str = ""


@dataclass(frozen=True, kw_only=True)
class LoadArgs:
    """``%rocm_load``'s options, typed (see ``%rocm_load?``), named as ``LocalModel``'s keywords are.

    ``model`` is a model: a ``.gguf`` path or catalogue name (default
    ``smollm2-135m``), a folder with ``router``, or with ``url`` the remote
    model id every request names (default: the server's only model).
    ``alias`` is the name the other magics use for it (default: ``model``,
    the URL, or ``router``).

    Example:
        >>> LoadArgs(ctx_size=4096).local_model
        'smollm2-135m'
        >>> LoadArgs(url="http://box:8000/v1").local_model
        Traceback (most recent call last):
        ...
        ValueError: with --url the model is a remote model id, not a file to load
    """

    model: str | None = None
    alias: str | None = None
    ctx_size: int | None = None
    gpu_layers: int | str | None = None
    parallel: int = 1
    server: str | None = None
    rpc: list[str] | None = None
    url: str | None = None
    api_key: str | None = None
    router: bool = False
    max_loaded: int = 1
    speculative: str = DEFAULT_SPECULATIVE
    draft_gpu_layers: int | None = None
    mmproj: str | None = None
    cache_type: str | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    flash_attn: str | None = None
    unified_memory: str = "auto"
    embedding: bool = False
    pooling: str | None = None
    reranking: bool = False
    backend: Backend | None = None
    device: int | None = None
    gpu_memory: str | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    warm_cache: bool = True

    def __post_init__(self) -> None:
        if self.url is not None and self.router:
            raise UsageError("--url uses a running server and --router starts one: give one of them")
        if self.url is None and self.api_key is not None:
            raise UsageError("--api-key goes with --url (a model of your own gets a key of its own)")

    @property
    def local_model(self) -> str:
        """The model to load here: ``model``, or the default one (never with ``url``)."""
        if self.url is not None:
            raise ValueError("with --url the model is a remote model id, not a file to load")
        return self.model or DEFAULT_MODEL

    def load_keywords(self) -> dict[str, Any]:
        """The ``LocalModel`` keywords these arguments give (the memory options included).

        Example:
            >>> LoadArgs(ctx_size=2048, cache_type="q8_0", embedding=True).load_keywords()["cache_type"]
            'q8_0'
        """
        return {"ctx_size": self.ctx_size, "gpu_layers": self.gpu_layers, "parallel": self.parallel,
                "server": self.server, "rpc": self.rpc or (), "speculative": self.speculative,
                "draft_gpu_layers": self.draft_gpu_layers, "cache_type": self.cache_type,
                "cache_type_k": self.cache_type_k, "cache_type_v": self.cache_type_v, "flash_attn": self.flash_attn,
                "unified_memory": self.unified_memory, "embedding": self.embedding, "pooling": self.pooling,
                "reranking": self.reranking, "batch_size": self.batch_size, "ubatch_size": self.ubatch_size,
                "mmproj": self.mmproj, "backend": self.backend, "device": self.device,
                "gpu_memory": self.gpu_memory, "warm_cache": self.warm_cache}


@dataclass(frozen=True)
class ModelsArgs:
    """``%rocm_models``'s folders to scan (none: ``ROCM_NB_MODEL_DIR``).

    Example:
        >>> ModelsArgs(dirs=["~/models"]).dirs
        ['~/models']
    """

    dirs: list[str]


@dataclass(frozen=True)
class StopArgs:
    """``%rocm_stop``'s model, or all of them.

    Example:
        >>> StopArgs(alias=None, all=True).all
        True
    """

    alias: str | None
    all: bool


def options_from(args: SamplingArgs) -> Options:
    """The generation options the arguments set (unset ones are left out), checked before any request.

    A value out of range is a ``UsageError`` naming the option, the value and
    what is allowed (:func:`~rocm_nb.client.request.check_options`): the
    magic's own input, checked before it loads a model (the default one when
    none is loaded), since the generation API's own check, at its entry,
    comes only once the magic has a model to call.

    Example:
        >>> options_from(GenerateArgs(temperature=0.0, seed=1))
        {'temperature': 0.0, 'seed': 1}
        >>> options_from(GenerateArgs(temperature=float("nan")))
        Traceback (most recent call last):
        ...
        IPython.core.error.UsageError: temperature must be a finite number ≥ 0, got nan
    """
    options: Options = {}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.seed is not None:
        options["seed"] = args.seed
    if args.stop:
        options["stop"] = args.stop
    try:
        check_options(options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return options
