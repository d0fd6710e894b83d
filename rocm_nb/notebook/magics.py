"""IPython magics: thin adapters over :class:`~rocm_nb.model.LocalModel`.

``%load_ext rocm_nb`` registers:

* ``%rocm_load [MODEL] [--alias ALIAS] [--ctx-size N] [--gpu-layers N|auto] [--cache-type T]
  [--flash-attn on|off|auto] [--embedding [--pooling P]] [--reranking] [--server PATH]
  [--backend rocm|cuda|vulkan|cpu] [--device N] [--gpu-memory SIZE]
  [--speculative off|ngram|DRAFT] [--mmproj FILE] [--url URL [--api-key KEY]] [--router] [-- ARGS]``
  — the options are ``LocalModel``'s keywords (``--ctx`` is short for ``--ctx-size``)
* ``%%rocm_generate [-a ALIAS] [options]`` — the cell is the prompt; ``{name}`` is filled
  from the user namespace (``{{`` and ``}}`` for literal braces); ``--image NAME``
  sends the image a variable holds (a figure, an array, a file path…)
* ``%rocm_chat [ALIAS] [--system TEXT] [--temperature T] [--max-tokens N] [--seed N]``
  — a chat panel starting with those settings
* ``%rocm_status``, ``%rocm_stop [ALIAS|--all]``
* ``%rocm_models [DIR ...]`` — the GGUF models on this machine; ``%rocm_load``
  tab-completes their names

Each magic documents its options: ``%%rocm_generate?``. Option values are
quoted as in a shell (``--system "Be brief."``). The words mean one thing
each: a *model* is a model file or catalogue name (or, with ``--url``, a
remote model id); an *alias* is the name a loaded model goes by in this
notebook (``--alias``, and the ALIAS of ``-a``, ``%rocm_chat`` and ``%rocm_stop``).

Example (in a notebook)::

    %load_ext rocm_nb
    %rocm_load smollm2-135m --ctx-size 4096
    %%rocm_generate --max-tokens 64 --temperature 0
    Explain {topic} to a ten year old.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from rocm_nb._escape import printable
from rocm_nb._extras import needs_extra
from rocm_nb._lease import ModelState
from rocm_nb._options import DEFAULT_CTX_CAP, DEFAULT_SPECULATIVE, POOLINGS
from rocm_nb.client import Client, connect
from rocm_nb.client.logprobs import DEFAULT_TOP_LOGPROBS, MAX_TOP_LOGPROBS
from rocm_nb.client.request import DEFAULT_MAX_TOKENS
from rocm_nb.client.status import ServerStatus
from rocm_nb.errors import RocmNbError, ServerCrashed, describe_exit
from rocm_nb.hardware import describe, detect
from rocm_nb.model import LocalModel
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL
from rocm_nb.modelfiles.fit import CACHE_TYPES, FLASH_ATTN
from rocm_nb.modelfiles.library import ModelLibrary, model_names, models
from rocm_nb.notebook._format import FORMATS, formatted, json_schema, show
from rocm_nb.notebook._magic_args import (
    ChatArgs,
    GenerateArgs,
    LoadArgs,
    ModelsArgs,
    StopArgs,
    options_from,
)
from rocm_nb.notebook.display import Publisher, ipython_publisher, progress_option, status_bundle
from rocm_nb.router import LocalRouter

with needs_extra("notebook"):
    from IPython.core import magic_arguments as _arguments
    from IPython.core.error import TryNext, UsageError
    from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
    from IPython.display import display as _display

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from rocm_nb.notebook.chat import ChatPanel

__all__ = ["RocmMagics", "complete_model", "fill_placeholders", "parse_args", "register"]

A = TypeVar("A")
F = TypeVar("F", bound=Callable[..., Any])

# IPython's argument decorators and display() are untyped: these typed fronts (not exported) keep
# mypy strict on this module.


def magic_arguments() -> Callable[[F], F]:
    """IPython's ``@magic_arguments()``, typed: the function's ``parser`` parses its line."""
    decorate: Callable[[F], F] = _arguments.magic_arguments()  # type: ignore[no-untyped-call]
    return decorate


def argument(*names: str, **options: Any) -> Callable[[F], F]:
    """IPython's ``@argument(...)``, typed: ``argparse``'s ``add_argument`` for a magic."""
    decorate: Callable[[F], F] = _arguments.argument(*names, **options)  # type: ignore[no-untyped-call]
    return decorate


def display(obj: object, *, raw: bool = False) -> None:
    """IPython's ``display()``, typed."""
    _display(obj, raw=raw)  # type: ignore[no-untyped-call]


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_placeholders(template: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` with ``str(namespace[name])``; ``{{``/``}}`` are literal braces.

    Anything else in braces (JSON, code) is left alone.

    Example:
        >>> fill_placeholders('Explain {topic}. {"k": 1} {{x}}', {"topic": "GPUs"})
        'Explain GPUs. {"k": 1} {x}'
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in namespace:
            raise UsageError(
                f"{{{name}}} in the prompt, but no variable {name!r} is defined; "
                f"define it, or write {{{{{name}}}}} for literal braces"
            )
        return str(namespace[name])

    return _PLACEHOLDER.sub(substitute, template)


def _gpu_layers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--gpu-layers takes a number or 'auto', not {value!r}") from None


def _say(text: str) -> None:
    """Show a line of text in the cell's output, the way the other magics show theirs.

    The line names models, files and servers, and what they call themselves is
    not trusted: every control character is escaped (:func:`~rocm_nb._escape.printable`).
    """
    display({"text/plain": printable(text)}, raw=True)


def _plain(publish: Publisher) -> Publisher:
    """``publish`` for text that names models, files and servers, or quotes a server's log: none of it is
    trusted, so its control characters are escaped (:func:`~rocm_nb._escape.printable`) as it is shown.

    Newlines are kept (the text's own lines): a name that belongs on one line is
    :func:`~rocm_nb._escape.printable` where it is put into the text.
    """
    return lambda bundle, update: publish({kind: printable(text, lines=True) for kind, text in bundle.items()}, update)


def parse_args(magic: str, line: str, into: Callable[..., A]) -> A:
    """Parse the line of the magic called ``magic`` the way a shell would, into a typed arguments object.

    ``--system "Be brief."`` loses its quotes (IPython's ``parse_argstring``
    keeps them). A bad option is a one-line ``UsageError``, as from
    ``parse_argstring``.

    Example:
        >>> parse_args("rocm_chat", '--system "Be brief." --temperature 0', ChatArgs).system
        'Be brief.'
        >>> parse_args("rocm_load", "smollm2-135m --ctx 4096 --gpu-layers auto", LoadArgs).ctx_size
        4096
        >>> parse_args("rocm_stop", "--all", StopArgs)
        StopArgs(alias=None, all=True)
    """
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{line!r}: {exc}") from None
    parser = getattr(RocmMagics, magic).parser  # set by @magic_arguments
    return into(**vars(parser.parse_args(words)))


@magics_class
class RocmMagics(Magics):
    """The ``%rocm_*`` magics; one instance per IPython shell holds its models."""

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self.models: dict[str, Client | LocalModel | LocalRouter] = {}
        self.current: str | None = None
        self._load_lines: dict[str, str] = {}  # alias -> the %rocm_load line that loaded it (to reload a crash)
        self._loading = threading.RLock()
        """One load (or stop) at a time per shell: two ``%rocm_load --alias a`` from two threads would each
        replace the other's model without closing it."""

    def _adopt(self, alias: str, model: Client | LocalModel | LocalRouter) -> None:
        """Make ``model`` the one ``alias`` names and the current one, and close what ``alias`` held before.

        Every load goes through here (a local model, a router, a ``--url``
        server), so no server is left running without a name: the one it
        replaces stops when nobody else uses it.
        """
        with self._loading:
            old, self.models[alias], self.current = self.models.get(alias), model, alias
            if old is not None and old is not model:
                old.close()

    # -- helpers ----------------------------------------------------------------------------

    def _model(self, alias: str | None) -> Client | LocalModel | LocalRouter:
        """The model called ``alias`` (default: the current one, loading the default model if none is).

        A model whose server crashed is not restarted behind the user's back
        (the same crash, out of memory say, would likely follow): every magic
        that needs it says so and gives the ``%rocm_load`` line that starts a
        fresh one, as ``%rocm_status`` (state ``crashed``) and its monitor do.
        """
        if alias is not None:
            if alias not in self.models:
                known = ", ".join(self.models) or "none yet"
                raise UsageError(f"no model called {alias!r} is loaded (loaded: {known}); use %rocm_load")
        else:
            with self._loading:
                if self.current is None:
                    self._load(DEFAULT_MODEL, alias=DEFAULT_MODEL)
            assert self.current is not None
            alias = self.current
        model = self.models[alias]
        if isinstance(model, LocalModel) and model.state is ModelState.CRASHED:
            what, _ = describe_exit(model.server.returncode, loading=False)
            raise UsageError(f"{alias}: its llama-server {what}; run `%rocm_load {self._load_lines.get(alias, alias)}` "
                             "to start a fresh one (model.logs() has its last log lines)")
        return model

    def _load(self, spec: str, *, alias: str, **kwargs: Any) -> LocalModel:
        with _usage():
            model = LocalModel(spec, **kwargs)  # an equal config attaches to the running server
        publish = _plain(ipython_publisher())
        name = printable(model.name)
        publish({"text/plain": f"… loading {name} …"}, False)

        def progress(elapsed: float, line: str) -> None:
            publish({"text/plain": f"… loading {name} … {elapsed:.1f} s  {printable(line[:100])}"}, True)

        began = time.perf_counter()
        try:
            model.start(progress)
        except BaseException:  # Ctrl-C included: IPython keeps the traceback's frames, so nothing else would stop it
            model.close()
            raise
        self._adopt(alias, model)  # ours, and in %rocm_status, before anything else can fail
        layers = model.info.block_count
        status = model.status()
        offload = (
            "CPU only" if model.backend == "cpu"
            else f"{status.offloaded_layers} of {status.layers} layers on the GPU (the server's report)"
            if status.offloaded_layers is not None
            else f"{model.config.gpu_layers} of {layers + 1 if layers else '?'} layers on the GPU"
        )
        about = model.info.summary(model.name)  # the name typed leads; the GGUF's own name is detail
        publish({"text/plain": (
            f"✓ {about if alias == model.name else f'{alias}: {about}'}\n"
            f"  backend {model.backend} · {offload} · ctx {model.config.ctx_size} · "
            f"ready in {time.perf_counter() - began:.2f} s · pid {model.pid}\n"
            f"  memory: {printable(model.fit.note)}"
            + (f"\n  prompt cache: {printable(model.warm_start.note)}"  # it may quote the server's own words
               if model.warm_start and model.warm_start.note else "")
        )}, True)
        return model

    # -- magics -----------------------------------------------------------------------------

    @magic_arguments()
    @argument("model", nargs="?", default=None,
              help=f"a .gguf path, catalogue name or hf:owner/repo/file.gguf (default {DEFAULT_MODEL}); with --router "
                   "a folder of them; with --url the remote model id every request names (default: its only one)")
    @argument("--alias", default=None,
              help="the name the other magics use for it (default: the model, the URL, or 'router')")
    @argument("--ctx-size", "--ctx", dest="ctx_size", type=int, default=None,
              help=f"context size, all slots together (default: min(trained, {DEFAULT_CTX_CAP}))")
    @argument("--gpu-layers", type=_gpu_layers, default=None,
              help="layers to offload to the GPU, or 'auto' (as many as fit: the memory plan's choice)")
    @argument("--parallel", type=int, default=1, help="server slots (concurrent generations)")
    @argument("--cache-type", choices=CACHE_TYPES, default=None,
              help="KV cache type of K and V (q8_0 takes half the memory of the default f16)")
    @argument("--cache-type-k", choices=CACHE_TYPES, default=None, help="KV cache type of K alone")
    @argument("--cache-type-v", choices=CACHE_TYPES, default=None,
              help="KV cache type of V alone (a quantised V needs flash attention)")
    @argument("--flash-attn", choices=FLASH_ATTN, default=None, help="flash attention (default: the server's, auto)")
    @argument("--unified-memory", choices=("auto", "on", "off"), default="auto",
              help="on an AMD APU, whether the plan counts GTT (system RAM the GPU maps) beside the carve-out")
    @argument("--batch-size", type=int, default=None, help="logical batch (-b; default 2048)")
    @argument("--ubatch-size", type=int, default=None, help="micro-batch (-ub; default 512): sizes the compute buffer")
    @argument("--embedding", action="store_true", help="an embeddings-only server (model.embed)")
    @argument("--pooling", choices=POOLINGS, default=None, help="with --embedding: the pooling (default: the model's)")
    @argument("--reranking", action="store_true", help="a reranking server (model.rerank)")
    @argument("--server", default=None, help="path of the llama-server binary to use")
    @argument("--rpc", action="append", default=None, help="host:port of an RPC worker (repeatable)")
    @argument("--url", default=None, help="use a running llama-server or OpenAI-compatible server instead")
    @argument("--api-key", default=None, help="API key for --url")
    @argument("--router", action="store_true",
              help="serve every GGUF in the folder given as the model, one child llama-server per model")
    @argument("--max-loaded", type=int, default=1, help="with --router: the most models loaded at once")
    @argument("--speculative", default=DEFAULT_SPECULATIVE,
              help=f"speculative decoding: off, ngram, or a draft model's .gguf path or catalogue name "
                   f"(default {DEFAULT_SPECULATIVE}; the server verifies every draft)")
    @argument("--draft-gpu-layers", type=int, default=None,
              help="the draft model's layers on the GPU (default: all on a GPU, none on the CPU)")
    @argument("--backend", choices=["rocm", "cuda", "vulkan", "cpu"], default=None,
              help="the backend to use instead of this machine's (vulkan also runs on Mesa's software device)")
    @argument("--device", type=int, default=None, help="the one GPU to use: its HIP, CUDA or Vulkan index")
    @argument("--gpu-memory", default=None, help="the most GPU memory the model may take, e.g. 6GiB or 64MiB")
    @argument("--mmproj", default=None,
              help="the image projector (mmproj-….gguf path, hf: reference or catalogue name) that makes the model "
                   "take images; a catalogue vision model brings its own")
    @argument("--no-warm-cache", dest="warm_cache", action="store_false",
              help="do not keep the prompt cache across restarts (default: saved when the model closes, restored "
                   "when it starts again)")
    @line_magic
    def rocm_load(self, line: str) -> None:
        """Start (or reuse) a model and make it the current one.

        The options are ``LocalModel``'s keywords (``--ctx-size`` is
        ``ctx_size=``; ``--ctx`` is its short form). Arguments after ``--``
        go to llama-server as they are, except those that change its memory,
        which have options here (the memory plan is made before the server
        starts). With ``--url`` nothing is started: the magics talk to that
        server, and MODEL is the remote model id.
        """
        with self._loading:
            self._rocm_load(line)

    def _rocm_load(self, line: str) -> None:
        whole = line.strip()
        line, _, extra = line.partition(" -- ")
        args = parse_args("rocm_load", line, LoadArgs)
        if args.url:
            client = connect(args.url, api_key=args.api_key, model=args.model)
            offered = client.models()  # fails loudly here if the server is unreachable
            kind, using = client.server_info.name, client.model  # several models without a MODEL: says so here
            alias = args.alias or args.url
            self._adopt(alias, client)
            _say(f"✓ {alias}: {args.url} ({kind}, offers {', '.join(offered) or 'no model list'}"
                 f"{f'; using {using}' if using else ''})")
            return
        if args.router:
            with _usage():
                router = LocalRouter(args.local_model, max_loaded=args.max_loaded, ctx_size=args.ctx_size,
                                     gpu_layers=args.gpu_layers if isinstance(args.gpu_layers, int) else None,
                                     parallel=args.parallel, flash_attn=args.flash_attn, cache_type=args.cache_type,
                                     cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
                                     server=args.server, extra_args=shlex.split(extra))
            try:
                router.start()
            except BaseException:  # as for a model: IPython keeps the traceback's frames, so stop it here
                router.close()
                raise
            alias = args.alias or "router"
            self._adopt(alias, router)
            _say(f"✓ {alias}: router over {router.folder} (models: {', '.join(router.models())}; "
                 f"at most {args.max_loaded} loaded); pick one per request with model=")
            return
        self._load_lines[args.alias or args.local_model] = whole
        self._load(args.local_model, alias=args.alias or args.local_model, extra_args=shlex.split(extra),
                   **args.load_keywords())

    @magic_arguments()
    @argument("-a", "--alias", default=None, help="the loaded model to use, by its alias (default: the current one)")
    @argument("--max-tokens", type=int, default=None, help=f"most tokens to generate (default {DEFAULT_MAX_TOKENS})")
    @argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    @argument("--seed", type=int, default=None, help="sampling seed, for repeatable output")
    @argument("--stop", action="append", default=None, help="stop sequence (repeatable)")
    @argument("--system", default=None, help="system prompt (chat mode)")
    @argument("--chat", dest="raw", action="store_false", default=False, help="use the chat template (default)")
    @argument("--raw", dest="raw", action="store_true", default=False, help="plain completion of the text, no template")
    @argument("--out", default=None, help="store the Completion (with --format json: the data) in this variable")
    @argument("--no-stream", action="store_true", help="show the result only when complete")
    @argument("--json-schema", default=None, help="name of a variable holding a JSON schema the output must match")
    @argument("--probs", type=int, nargs="?", const=DEFAULT_TOP_LOGPROBS, default=None, metavar="K",
              help=f"shade each token by its probability; hover or Tab shows its top K alternatives (default "
                   f"{DEFAULT_TOP_LOGPROBS}, at most {MAX_TOP_LOGPROBS}), with a before/after sampling toggle")
    @argument("--image", action="append", default=None, metavar="NAME",
              help="a variable holding an image to send with the prompt (repeatable): a matplotlib figure, a NumPy "
                   "array, a PIL or IPython image, bytes or a file path; needs a vision model")
    @argument("--format", choices=FORMATS, default=FORMATS[0],
              help="markdown (default) or text: how the reply is shown; code: its code goes into a new cell "
                   "below, not run; json: parsed (and checked against --json-schema) and returned")
    @cell_magic
    def rocm_generate(self, line: str, cell: str) -> Any:
        """Generate from the cell's text, streaming tokens into the output.

        ``--format code`` puts the reply's code (its first fenced block, else
        all of it) into a new cell below, without running it. ``--format json``
        constrains the reply to ``--json-schema`` (to any JSON object without
        one), parses and validates it, and returns the data (or stores it in
        ``--out``); a reply that is not valid JSON or breaks the schema raises
        ``GenerationError`` naming the problem, with the raw reply in ``.body``.
        Otherwise ``--out`` stores the ``Completion``.

        Reasoning shows in a collapsible "Thinking" block above the reply, and a
        long prompt shows a progress bar while the server reads it.
        ``--probs [K]`` shows the reply as tokens shaded by probability, their
        alternatives on hover or Tab, a before/after sampling toggle and a
        context meter (:class:`~rocm_nb.notebook.reply_view.ReplyView`).
        """
        args = parse_args("rocm_generate", line, GenerateArgs)
        if not cell.strip():
            raise UsageError("%%rocm_generate has no prompt: write it in the cell, below the magic's line")
        user_ns = self.shell.user_ns if self.shell is not None else {}
        prompt = fill_placeholders(cell.strip(), user_ns)
        schema = json_schema(args.format, args.json_schema, user_ns)
        options = options_from(args) | ({"json_schema": schema} if schema is not None else {})  # bad ones: first
        images = [_variable(user_ns, name, "--image") for name in args.image or ()]
        model = self._model(args.alias)
        options = progress_option(model) | options  # a bar while a long prompt is read
        messages = args.messages(prompt)
        if images:  # encoded once, here: a model without a projector refuses before any request
            messages[-1] = model.user_message(prompt, images=images)
        view, publish = None, None
        if args.probs is not None:
            from rocm_nb.notebook.reply_view import (
                live_view,  # anywidget loads with the first --probs, not with the magics
            )

            view, publish, options = live_view(
                (lambda o: model.astream(prompt, **o)) if args.raw else (lambda o: model.achat_stream(messages, **o)),
                options, probs=args.probs)
            display(view)
        stream = model.stream(prompt, **options) if args.raw else model.chat_stream(messages, **options)
        try:
            completion = show(stream, args.format, live=not args.no_stream, busy=lambda: _busy(model),
                              publish=publish, view=view)
        except ServerCrashed as exc:  # its notes say model.start(); in a notebook with magics this is the step
            exc.add_note("With the magics: run %rocm_load again (the same line) to start a fresh server.")
            raise
        reply = formatted(completion, args.format, schema)
        if reply.new_cell is not None and self.shell is not None:
            self.shell.set_next_input(reply.new_cell, replace=False)  # a new cell below, not run
        return reply.result(out=args.out, namespace=user_ns)

    @magic_arguments()
    @argument("alias", nargs="?", default=None, help="model to chat with (default: the current one)")
    @argument("--system", default="", help="system prompt (the panel has a field for it too)")
    @argument("--temperature", type=float, default=None, help="starting temperature (0 = greedy)")
    @argument("--max-tokens", type=int, default=None, help="starting most tokens per reply")
    @argument("--seed", type=int, default=None, help="sampling seed, for repeatable replies")
    @line_magic
    def rocm_chat(self, line: str) -> ChatPanel:
        """Show a chat panel on the current model (or on ``ALIAS``)."""
        from rocm_nb.notebook.chat import ChatPanel  # ipywidgets loads with the first panel, not with the magics

        args = parse_args("rocm_chat", line, ChatArgs)
        options = options_from(args)  # a bad option is refused before any model loads
        return ChatPanel(self._model(args.alias), system=args.system, **options)

    @line_magic
    def rocm_status(self, line: str) -> None:
        """Running models: backend, pid, port, uptime, memory, speed; the GPUs; a live monitor."""
        statuses = {}
        for alias, model in self.models.items():
            statuses[alias] = _status(model)
            if isinstance(model, LocalRouter):  # one row per loaded model: its child process and memory
                with contextlib.suppress(RocmNbError):
                    statuses.update({f"{alias} › {name}": row for name, row in model.children_status().items()})
        display(status_bundle(statuses, current=self.current, notes=describe(detect())), raw=True)
        current = self.models.get(self.current) if self.current is not None else None
        if isinstance(current, LocalModel) and current.pid is not None:
            display(current.monitor())  # VRAM and GPU busy %, or the server's memory and CPU

    @magic_arguments()
    @argument("dirs", nargs="*", metavar="DIR",
              help="folders to scan instead of ROCM_NB_MODEL_DIR (the caches are always scanned)")
    @line_magic
    def rocm_models(self, line: str) -> ModelLibrary:
        """The GGUF models on this machine as a table (what ``rocm_nb.models()`` returns)."""
        args = parse_args("rocm_models", line, ModelsArgs)
        return models(args.dirs or None)

    @magic_arguments()
    @argument("alias", nargs="?", default=None, help="model to stop (default: the current one)")
    @argument("--all", action="store_true", help="stop every model this notebook started")
    @line_magic
    def rocm_stop(self, line: str) -> None:
        """Stop a model (its server stops when no one else uses it)."""
        args = parse_args("rocm_stop", line, StopArgs)
        with self._loading:
            aliases = list(self.models) if args.all else [args.alias or self.current]
            for alias in aliases:
                if alias is None or alias not in self.models:
                    raise UsageError(f"no model called {alias!r} is loaded")
                self.models.pop(alias).close()
                _say(f"stopped {alias}")
                if self.current == alias:
                    self.current = next(iter(self.models), None)


@contextlib.contextmanager
def _usage() -> Iterator[None]:
    """A ``ValueError`` about what was asked for (an option out of range, a name a router cannot serve, a file that
    is no GGUF) as a ``UsageError``: IPython shows it as one line, not a traceback into rocm_nb."""
    try:
        yield
    except ValueError as exc:
        raise UsageError("\n".join([str(exc), *getattr(exc, "__notes__", ())])) from None


def _variable(namespace: Mapping[str, Any], name: str, option: str) -> Any:
    """The value of the variable ``name`` an option names; a ``UsageError`` when there is none."""
    if name not in namespace:
        raise UsageError(f"{option} {name}: no variable {name!r} is defined; assign the image to it first "
                         f"({name} = plt.gcf(), say)")
    return namespace[name]


def _busy(model: Client | LocalModel | LocalRouter) -> bool:
    """Whether the server is still working on a request (``/metrics``: requests being processed)."""
    return model.metrics().get("llamacpp:requests_processing", 0.0) > 0


def _status(model: Client | LocalModel | LocalRouter) -> ServerStatus:
    """``model.status()``, or a row that says why there is none: one bad server never hides the others."""
    try:
        return model.status()
    except Exception as exc:
        where = (model.base_url if isinstance(model, Client) else str(model.folder) if isinstance(model, LocalRouter)
                 else model.name)
        return ServerStatus(model="?", file=where, backend="?", state="error", error=f"{type(exc).__name__}: {exc}")


def complete_model(shell: InteractiveShell, event: Any) -> list[str]:
    """Tab completion of ``%rocm_load``'s model: catalogue names and the model library's names.

    Options and their values are left to IPython. IPython completes the word
    after its last delimiter (``hf:acme/ti`` → ``acme/ti``), so each match is
    cut to match.

    Example (in a notebook)::

        %rocm_load hf:acme/ti<TAB>   →   %rocm_load hf:acme/tiny-GGUF/tiny.Q8_0.gguf
    """
    before = event.text_until_cursor
    words = before.split()
    if not words:
        raise TryNext
    typed = "" if before[-1:].isspace() else words[-1]
    previous = words[-1] if not typed else words[-2] if len(words) > 1 else ""
    if typed.startswith("-") or previous.startswith("-"):
        raise TryNext
    cut = len(typed) - len(event.symbol)
    return [name[cut:] for name in model_names() if name.startswith(typed)]


def register(ipython: InteractiveShell) -> None:
    """Register the magics and ``%rocm_load``'s tab completion on an IPython shell (``%load_ext rocm_nb``).

    Example:
        >>> register(get_ipython())  # doctest: +SKIP
    """
    ipython.register_magics(RocmMagics(ipython))
    ipython.set_hook("complete_command", complete_model, str_key="%rocm_load")  # type: ignore[no-untyped-call]
