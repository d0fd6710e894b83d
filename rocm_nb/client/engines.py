"""Which kind of server a client talks to, what it can do, and how options are said to it.

A notebook that outgrows its GPU moves to a shared engine: a bigger
llama-server (or its router mode), vLLM, SGLang, Ollama, or any other
OpenAI-compatible server. :func:`detect_engine` finds out which, once per client,
from the one endpoint each kind is known by; :func:`refuse` and :func:`translate`
(called from :meth:`~rocm_nb.client.request.Request.body`, once per request) refuse
what that kind cannot honour and turn rocm_nb's options into what it takes.
The decisions, in one place:

* ``json_schema`` becomes OpenAI's ``response_format`` (``{"type":
  "json_schema", ...}``), which llama-server's chat endpoint takes too; only
  llama-server's plain ``/v1/completions`` keeps its native ``json_schema``
  (its ``response_format`` is read by the chat endpoint alone).
* ``repeat_penalty`` is ``repetition_penalty`` on vLLM and SGLang.
* ``grammar`` (a GBNF grammar) is llama.cpp's: any other kind refuses it with
  a ``ValueError`` before any request, never dropping it silently (vLLM's
  and SGLang's grammar options take other grammar languages).
* ``post_sampling`` and ``reasoning_budget`` are llama.cpp's too: refused
  the same way elsewhere.
* ``cache_prompt`` is llama.cpp's prompt-cache hint and ``return_progress``
  asks for its prefill-progress events: dropped elsewhere, where they change
  no reply (vLLM and SGLang cache prefixes by themselves).
* Ollama's OpenAI-compatible API has no ``top_k``, ``min_p`` or
  ``repeat_penalty``: asked for, they are a ``ValueError`` naming them.
* Every stream asks for ``stream_options.include_usage``, so token counts
  come back from servers that send no llama.cpp ``timings``.
* Options this table does not name pass as they are.

Sources of the shapes: llama.cpp's ``tools/server`` (the pinned sdist),
https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
(vLLM's extra parameters, ``/version``),
https://docs.ollama.com/api/openai-compatibility (Ollama's supported
fields, ``/api/version``) and SGLang's ``/get_server_info``.

Example:
    >>> translate({"json_schema": {"type": "object"}, "cache_prompt": True}, "vllm", "chat")
    {'response_format': {'type': 'json_schema', 'json_schema': {'name': 'reply', 'schema': {'type': 'object'}}}}
    >>> refuse({"grammar": "root ::= [a-z]+"}, "ollama", "chat")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: grammar is not supported by Ollama (a GBNF grammar is llama.cpp's); use json_schema= ...
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rocm_nb.errors import AmbiguousModel, GenerationError, GenerationTimeout, ServerUnavailable

__all__ = [
    "DEFAULT_CONCURRENCY",
    "ENGINE_NAMES",
    "Capabilities",
    "Engine",
    "ServerFacts",
    "ServerInfo",
    "detect_engine",
    "refuse",
    "root_url",
    "translate",
]

Engine = Literal["llama.cpp", "vllm", "sglang", "ollama", "openai"]
"""A kind of server; ``"openai"`` is any other OpenAI-compatible server."""

ENGINE_NAMES: dict[Engine, str] = {
    "llama.cpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang", "ollama": "Ollama",
    "openai": "this OpenAI-compatible server",
}

DEFAULT_CONCURRENCY = 8
"""Requests ``map()`` keeps in flight on a server that does not say how many it serves at once.

llama-server says (its slots); vLLM, SGLang and Ollama batch requests
themselves and queue the rest, so a few in flight keep them busy without
flooding a shared server. ``map(..., concurrency=N)`` overrides it.
"""

_GRAMMAR_HINT = "use json_schema= to constrain the reply"
_LLAMA_CPP_ONLY = {  # llama-server's own options, which no other kind takes: option -> what to do instead
    "grammar": _GRAMMAR_HINT,
    "post_sampling": "leave it out: the probabilities are then those before sampling",
    "reasoning_budget": "use reasoning_effort= or chat_template_kwargs= if the model's template takes them",
}
_REFUSED: dict[Engine, dict[str, str]] = {  # option -> what to do instead
    "vllm": _LLAMA_CPP_ONLY,
    "sglang": _LLAMA_CPP_ONLY,
    "openai": _LLAMA_CPP_ONLY,
    "ollama": {**_LLAMA_CPP_ONLY, "top_k": "leave it out", "min_p": "use top_p",
               "repeat_penalty": "leave it out (Ollama sets it per model)"},
}
_MEANINGLESS_ELSEWHERE = frozenset({"cache_prompt", "return_progress"})
"""llama.cpp options dropped for other kinds: they change no reply (a prompt cache, progress events)."""
_RENAMED: dict[Engine, dict[str, str]] = {
    "vllm": {"repeat_penalty": "repetition_penalty"},
    "sglang": {"repeat_penalty": "repetition_penalty"},
}
_WHY = {"grammar": " (a GBNF grammar is llama.cpp's)"}


@dataclass(frozen=True)
class Capabilities:
    """What a server can do, so a notebook can grey out what will not work.

    ``slots`` is how many requests it serves at once (llama.cpp; ``None``:
    it does not say); ``embeddings`` is ``None`` when the server does not
    say (llama-server tells it only by answering ``/v1/embeddings``);
    ``images`` says whether it takes images (llama-server: ``modalities``
    in ``/props``, true when it was started with a projector; ``None``: the
    server does not say).

    Example:
        >>> Capabilities(logprobs=True, tools=False, grammar=True, slots=4, embeddings=None).grammar
        True
    """

    logprobs: bool
    tools: bool
    grammar: bool
    slots: int | None
    embeddings: bool | None
    images: bool | None = None


@dataclass(frozen=True)
class ServerInfo:
    """What :func:`detect_engine` found: the kind of server, its version and capabilities.

    ``router`` is true for llama-server in router mode (many models, one per request).

    Example:
        >>> ServerInfo("vllm", "0.9.1", Capabilities(True, True, False, None, False)).name
        'vLLM'
    """

    engine: Engine
    version: str | None
    capabilities: Capabilities
    router: bool = False

    @property
    def name(self) -> str:
        """The kind's name for messages (``vLLM``, ``Ollama``…)."""
        return ENGINE_NAMES[self.engine]


def root_url(url: str) -> str:
    """The server's root from a base URL given with or without ``/v1`` and a trailing slash.

    Every engine documents its URL with ``/v1`` (what the ``openai`` SDK
    takes); rocm_nb keeps the root, since llama-server's own endpoints
    (``/props``, ``/tokenize``) live there.

    Example:
        >>> [root_url(u) for u in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/")]
        ['http://h:1', 'http://h:1', 'http://h:1', 'http://h:1']
        >>> root_url("https://gateway.example/team/v1")
        'https://gateway.example/team'
        >>> root_url("h:1")
        Traceback (most recent call last):
        ...
        ValueError: 'h:1' is not an http(s) URL; give one such as http://127.0.0.1:8080 or https://host/v1
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL; give one such as http://127.0.0.1:8080 or https://host/v1")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")).rstrip("/")


def refuse(options: Mapping[str, Any], engine: Engine, kind: Literal["completion", "chat"]) -> None:
    """A ``ValueError`` for the first option ``engine`` cannot honour at ``kind``'s endpoint (see the table above).

    Example:
        >>> refuse({"post_sampling": True}, "ollama", "chat")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: post_sampling is not supported by Ollama; leave it out: ...
        >>> refuse({"grammar": "root ::= [a-z]+"}, "llama.cpp", "completion")
    """
    refused = sorted(set(options) & set(_REFUSED.get(engine, {})))
    if refused:
        name = refused[0]
        raise ValueError(f"{name} is not supported by {ENGINE_NAMES[engine]}{_WHY.get(name, '')}; "
                         f"{_REFUSED[engine][name]}")
    if engine == "ollama" and kind == "completion" and "json_schema" in options:
        raise ValueError("json_schema is not supported by Ollama's /v1/completions; use chat() for a "
                         "reply constrained by a schema")


def translate(options: Mapping[str, Any], engine: Engine, kind: Literal["completion", "chat"]) -> dict[str, Any]:
    """``options`` said the way ``engine`` takes them (see the table above), once :func:`refuse` let them pass.

    Example:
        >>> translate({"repeat_penalty": 1.1, "top_k": 40}, "vllm", "completion")
        {'repetition_penalty': 1.1, 'top_k': 40}
        >>> translate({"json_schema": {}, "cache_prompt": False}, "llama.cpp", "completion")
        {'json_schema': {}, 'cache_prompt': False}
        >>> translate({"return_progress": True, "logprobs": True}, "vllm", "chat")
        {'logprobs': True}
    """
    out = {_RENAMED.get(engine, {}).get(key, key): value for key, value in options.items()
           if key not in _MEANINGLESS_ELSEWHERE or engine == "llama.cpp"}
    if "json_schema" in out and not (engine == "llama.cpp" and kind == "completion"):
        schema = out.pop("json_schema")
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    return out


Probe = Callable[[str], Any]
"""``probe(path)``: the JSON a GET of ``path`` answers, or ``None`` when it fails in any way."""


def detect_engine(probe: Probe) -> ServerInfo:
    """Find which kind of server answers ``probe``, from the endpoint each kind is known by.

    llama-server answers ``/props`` (with ``default_generation_settings``,
    or ``role: router`` in router mode), Ollama ``/api/version``, vLLM
    ``/version``, SGLang ``/get_server_info``; anything else is a generic
    OpenAI-compatible server. At most four GETs, once per client.

    Example:
        >>> detect_engine(lambda path: {"version": "0.6.2"} if path == "/api/version" else None).engine
        'ollama'
        >>> detect_engine(lambda path: {"total_slots": 2, "default_generation_settings": {},
        ...                      "chat_template_caps": {"supports_tools": True}} if path == "/props" else None)
        ServerInfo(engine='llama.cpp', version=None, capabilities=Capabilities(logprobs=True, tools=True, \
grammar=True, slots=2, embeddings=None, images=None), router=False)
        >>> detect_engine(lambda path: None).engine
        'openai'
    """
    props = probe("/props")
    if isinstance(props, dict) and ("default_generation_settings" in props or props.get("role") == "router"):
        slots = props.get("total_slots")
        caps = props.get("chat_template_caps")
        tools = bool(caps.get("supports_tools", True)) if isinstance(caps, dict) else True
        build = props.get("build_info")
        modalities = props.get("modalities")
        images = modalities.get("vision") if isinstance(modalities, dict) else None
        return ServerInfo("llama.cpp", build if isinstance(build, str) else None, Capabilities(
            logprobs=True, tools=tools, grammar=True, slots=slots if isinstance(slots, int) and slots > 0 else None,
            embeddings=None, images=images if isinstance(images, bool) else None), router=props.get("role") == "router")
    candidates: tuple[tuple[str, Engine], ...] = (("/api/version", "ollama"), ("/version", "vllm"))
    for path, engine in candidates:
        reply = probe(path)
        if isinstance(reply, dict) and isinstance(reply.get("version"), str):
            return ServerInfo(engine, reply["version"], Capabilities(
                logprobs=True, tools=True, grammar=False, slots=None, embeddings=engine == "ollama"))
    info = probe("/get_server_info")
    if isinstance(info, dict) and ("model_path" in info or "tokenizer_path" in info):
        version = info.get("version")
        return ServerInfo("sglang", version if isinstance(version, str) else None,
                          Capabilities(logprobs=True, tools=True, grammar=False, slots=None, embeddings=False))
    return ServerInfo("openai", None, Capabilities(logprobs=True, tools=True, grammar=False, slots=None,
                                                   embeddings=None))


def unless_fatal(call: Callable[[], Any]) -> Any:
    """``call()``, or ``None`` when the server answers it with an error or something that is not JSON.

    A server that cannot be reached, times out or refuses the key raises:
    that is no answer about what it serves, and nothing may be remembered.

    Example:
        >>> from rocm_nb.errors import StreamProtocolError
        >>> def html_page() -> None:
        ...     raise StreamProtocolError("GET /props answered text/html, not JSON")
        >>> unless_fatal(lambda: {"ok": True}), unless_fatal(html_page)
        ({'ok': True}, None)
    """
    try:
        return call()
    except (ServerUnavailable, GenerationTimeout):
        raise
    except GenerationError as exc:
        if exc.status_code in (401, 403):
            raise
        return None


class ServerFacts:
    """What a client learns of its server once, on first need: its kind, and the model requests name.

    ``model`` given is used as it is; else :meth:`model` asks
    ``list_models()`` once: one model is used, none means requests name none
    (a server without ``/v1/models``), several are an
    :class:`~rocm_nb.errors.AmbiguousModel` naming them. Thread-safe: two
    threads asking at once probe once.

    Example:
        >>> facts = ServerFacts(lambda path: None, lambda: ["a", "b"], model=None, where="http://h:1")
        >>> facts.info().engine
        'openai'
        >>> facts.model()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rocm_nb.errors.AmbiguousModel: http://h:1 serves 2 models (a, b): say which with model=, e.g. ...
    """

    def __init__(self, probe: Probe, list_models: Callable[[], list[str]], *, model: str | None, where: str,
                 info: ServerInfo | None = None) -> None:
        self._probe, self._list_models, self._where = probe, list_models, where
        self._model, self._model_known = model, model is not None
        self._info = info
        self._lock = threading.Lock()

    @property
    def known(self) -> bool:
        """Whether :meth:`info` is known already (no I/O to ask it)."""
        return self._info is not None

    @property
    def model_known(self) -> bool:
        """Whether :meth:`model` is known already (no I/O to ask it)."""
        return self._model_known

    def info(self) -> ServerInfo:
        """The server's kind and capabilities, detected on the first call."""
        with self._lock:
            if self._info is None:
                self._info = detect_engine(self._probe)
            return self._info

    def model(self) -> str | None:
        """The model requests name by default (see the class docstring)."""
        with self._lock:
            if not self._model_known:
                names = unless_fatal(self._list_models) or []
                if len(names) > 1:
                    shown = ", ".join(names)
                    raise AmbiguousModel(f"{self._where} serves {len(names)} models ({shown}): say which with "
                                         f"model=, e.g. connect(url, model={names[0]!r}) or chat(..., "
                                         f"model={names[0]!r})", models=names)
                self._model, self._model_known = (names[0] if names else None), True
            return self._model
