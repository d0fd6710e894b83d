"""The generation API, written once for :class:`~rocm_nb.client.Client` and :class:`~rocm_nb.LocalModel`.

:class:`GenerationAPI` holds every public method that talks to a server:
generation (``generate``, ``stream``, ``chat``, ``chat_stream``, their async
twins, ``map``/``amap``, with images for a vision model:
:mod:`rocm_nb.client.images`), embeddings, reranking and tools, and the server's
own utilities (``tokenize``, ``detokenize``, ``apply_template``, ``n_ctx``,
``props``, ``metrics``, ``models``, ``health``). Each reaches the server
through one of two hooks: ``_client()`` for sync code and ``await
_aclient()`` for async code, which return a
:class:`~rocm_nb.client._session.Session`. A ``Client`` answers with itself;
a ``LocalModel`` starts its server there on the first request, in a worker
thread for async code. That is why ``LocalModel`` composes a ``Client``
instead of inheriting from it, and neither class copies the other.

Example:
    >>> parse_metrics("# HELP x\\nllamacpp:n_decode_total 12\\n")
    {'llamacpp:n_decode_total': 12.0}
"""


from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

from rocm_nb.client._accumulator import Accumulator
from rocm_nb.client._batch import Prompt, adrain
from rocm_nb.client.completion import Completion, Kind, Message
from rocm_nb.client.images import ImageInput, ImageLimit, has_images, with_images
from rocm_nb.client.logprobs import TokenPiece, read_pieces
from rocm_nb.client.request import Options, Request, check_options, check_request
from rocm_nb.client.stream import AsyncTokenStream, TokenStream
from rocm_nb.errors import GenerationError, RocmNbError, StreamProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    import numpy as np
    import numpy.typing as npt

    from rocm_nb.client._session import Session
    from rocm_nb.client.tool_loop import ToolRun

__all__ = ["GenerationAPI", "parse_metrics"]


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text (llama-server's ``/metrics``) into a flat dict.

    Example:
        >>> parse_metrics("# HELP x\\nllamacpp:n_decode_total 12\\n")
        {'llamacpp:n_decode_total': 12.0}
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


class GenerationAPI:
    """The generation API, shared by :class:`~rocm_nb.client.Client` and :class:`~rocm_nb.LocalModel`.

    Every public method reaches the server through one of two hooks, so the
    API is written once: ``_client()`` returns the session to use (a
    ``LocalModel`` starts its server there, on the first request), and
    ``await _aclient()`` is its async twin, which must not block the event
    loop (a ``LocalModel`` starts its server in a worker thread).
    ``_better_error`` turns a transport failure into a better error (a
    ``LocalModel``: :class:`~rocm_nb.errors.ServerCrashed` when its server died).

    ``generate``/``stream`` take a prompt string (``/v1/completions``);
    ``chat``/``chat_stream`` take messages and let the server apply the
    model's chat template (``/v1/chat/completions``). Each has an async twin
    (``agenerate``, ``astream``, ``achat``, ``achat_stream``); ``astream``
    and ``achat_stream`` do nothing until iterated.

    ``asks_progress`` says whether requests through this object may ask for
    prefill progress (``return_progress``): true for a ``LocalModel`` (its
    own llama-server), false for a ``Client``, whose server may be of a kind
    that refuses the field. The notebook's displays read it.

    Example:
        >>> from rocm_nb import Client
        >>> Client("http://127.0.0.1:9").asks_progress
        False
    """

    asks_progress: bool = False

    def _client(self) -> Session:
        raise NotImplementedError

    def _image_limit(self) -> ImageLimit:
        """How large an image is worth sending; a model that takes no images raises here, before any request.

        A ``Client`` does not know its server's projector: the default limit,
        and the server says itself when it takes no images.
        """
        return ImageLimit()

    def _messages(self, messages: str | Sequence[Message], images: Sequence[ImageInput]) -> Sequence[Message]:
        """The messages to send: a string as the user's message, images encoded (:func:`with_images`)."""
        if isinstance(messages, str) or images or has_images(messages):
            listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
            return with_images(listed, images, self._image_limit() if images or has_images(listed) else None)
        return messages

    def _batch_prompts(self, prompts: Iterable[Prompt]) -> list[Prompt]:
        """A batch's prompts with their images encoded: a model that takes none refuses the batch first.

        Only lists of messages are touched; anything else that is not a prompt
        fails alone, as its item's result, when its request is made.
        """
        return [self._messages(p, ()) if isinstance(p, list) else p for p in prompts]

    async def _aclient(self) -> Session:
        return self._client()

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        return None

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _endpoint(kind: Kind) -> str:
        return "/v1/chat/completions" if kind == "chat" else "/v1/completions"

    def _open_astream(self, request: Request, http: httpx.AsyncClient | None = None) -> AsyncTokenStream:
        """A stream that starts nothing until it is iterated; ``http`` is a batch's own async client."""
        endpoint = self._endpoint(request.kind)

        async def open_response() -> httpx.Response:
            client = await self._aclient()
            payload = await client._apayload(request)
            client._close_held_streams()  # a sync stream this thread left open ends first (see stream())
            stream.slot_ctx = client._slot_ctx  # known only now: the stream was made before its client
            session = http or client._ahttp()
            return await session.send(session.build_request("POST", endpoint, json=payload), stream=True)

        stream = AsyncTokenStream(open_response, Accumulator(request.kind, logprobs=bool(request.options.get(
            "logprobs"))), self._better_error)
        return stream

    @staticmethod
    def _drain(stream: TokenStream) -> Completion:
        with stream:
            for _ in stream:
                pass
        assert stream.completion is not None
        return stream.completion

    # -- generation -------------------------------------------------------------------------

    def stream(self, prompt: str, **options: Unpack[Options]) -> TokenStream:
        """Stream the continuation of ``prompt`` as text pieces.

        Nothing is sent until the first piece is asked for. A stream ends, and
        the server cancels its generation, when it is closed: ``close()``,
        leaving its ``with`` block, an exception or Ctrl-C while reading it,
        or dropping it (``for piece in model.stream(...): break`` drops it at
        the ``break``). A stream kept in a variable is *not* closed by
        ``break``: instead, the next generation request this thread sends
        through the same client or model (any of ``generate``, ``chat``,
        ``map``, a stream's first piece, their async twins, the chat panel)
        closes it first, so a forgotten stream never holds a server slot. It
        does so whether or not the slots are all busy: an abandoned stream
        slows the other slots down too. Streams read by other threads are left
        alone; to read two streams side by side in one thread, use
        ``astream``/``achat_stream`` or :meth:`map`.

        Example:
            >>> for piece in model.stream("The sky is", max_tokens=8):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        request = check_request("completion", prompt, options)  # bad options fail here: no server starts for them
        return self._client()._open_stream(request)

    def generate(self, prompt: str, **options: Unpack[Options]) -> Completion:
        """Continue ``prompt`` and return the whole :class:`Completion`.

        Example:
            >>> model.generate("2 + 2 =", max_tokens=4, temperature=0).text  # doctest: +SKIP
            ' 4'
        """
        return self._drain(self.stream(prompt, **options))

    def chat_stream(self, messages: str | Sequence[Message], *, images: Sequence[ImageInput] = (),
                    **options: Unpack[Options]) -> TokenStream:
        """Stream the assistant's reply to ``messages`` as text pieces (what closes it: :meth:`stream`).

        ``messages`` may be one string (the user's message); ``images`` join
        the last (the user's) message, as :meth:`chat` says.

        Example:
            >>> for piece in model.chat_stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        request = check_request("chat", self._messages(messages, images), options)  # no server starts for bad ones
        return self._client()._open_stream(request)

    def chat(self, messages: str | Sequence[Message], *, images: Sequence[ImageInput] = (),
             **options: Unpack[Options]) -> Completion:
        """Return the assistant's reply to ``messages`` (a list of messages, or one string: the user's message).

        ``images`` (file paths, bytes, PIL images, NumPy arrays, matplotlib
        figures, IPython images: :mod:`rocm_nb.client.images`) join the last
        message, which must be the user's; image parts inside messages
        (``{"type": "image", "image": fig}``, or OpenAI's ``image_url`` parts)
        are encoded too. Each image is scaled to what the model's projector
        uses; :meth:`user_message` gives the message as it is sent, for a
        history. A model loaded without a projector refuses images before any
        request (:class:`~rocm_nb.errors.ImagesNotSupported`).

        Example:
            >>> model.chat([{"role": "user", "content": "Hi!"}]).text  # doctest: +SKIP
            'Hello! How can I help you today?'
            >>> model.chat("What trend does this show?", images=[fig]).text  # doctest: +SKIP
        """
        return self._drain(self.chat_stream(messages, images=images, **options))

    def user_message(self, text: str, *, images: Sequence[ImageInput] = ()) -> Message:
        """The user's message of ``text`` and ``images`` exactly as :meth:`chat` sends it: keep it in a history.

        Example:
            >>> history = [model.user_message("What is on this plot?", images=[fig])]  # doctest: +SKIP
            >>> reply = model.chat(history)  # doctest: +SKIP
            >>> history.append({"role": "assistant", "content": reply.text})  # doctest: +SKIP
        """
        return self._messages(text, images)[0]

    def astream(self, prompt: str, **options: Unpack[Options]) -> AsyncTokenStream:
        """Async twin of :meth:`stream`.

        Example:
            >>> async for piece in model.astream("The sky is"):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._open_astream(check_request("completion", prompt, options))

    async def agenerate(self, prompt: str, **options: Unpack[Options]) -> Completion:
        """Async twin of :meth:`generate`.

        Example:
            >>> (await model.agenerate("2 + 2 =", max_tokens=4)).text  # doctest: +SKIP
        """
        return await adrain(self.astream(prompt, **options))

    def achat_stream(self, messages: str | Sequence[Message], *, images: Sequence[ImageInput] = (),
                     **options: Unpack[Options]) -> AsyncTokenStream:
        """Async twin of :meth:`chat_stream` (its images are encoded here, on the calling thread).

        Example:
            >>> async for piece in model.achat_stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._open_astream(check_request("chat", self._messages(messages, images), options))

    async def achat(self, messages: str | Sequence[Message], *, images: Sequence[ImageInput] = (),
                    **options: Unpack[Options]) -> Completion:
        """Async twin of :meth:`chat`.

        Example:
            >>> (await model.achat([{"role": "user", "content": "Hi"}])).text  # doctest: +SKIP
        """
        return await adrain(self.achat_stream(messages, images=images, **options))

    # -- batches (the engine is rocm_nb.client._batch) --------------------------------------------

    def map(
        self,
        prompts: Iterable[Prompt],
        *,
        chat: bool = True,
        concurrency: int | None = None,
        progress: bool = True,
        **options: Unpack[Options],
    ) -> list[Completion | Exception]:
        """Generate for many prompts at once, over the server's parallel slots.

        Each prompt is a string (sent as a user message, or as a plain
        completion with ``chat=False``) or a list of chat messages. Up to
        ``concurrency`` requests are in flight (default: the server's slots,
        ``total_slots`` in llama-server's ``/props``; for a server that does
        not say, :data:`~rocm_nb.client.engines.DEFAULT_CONCURRENCY`), with
        a progress bar (``tqdm.auto``: a widget in a notebook) unless
        ``progress=False``.

        Returns one result per prompt, in input order. As with
        ``asyncio.gather(..., return_exceptions=True)``, an item that failed
        holds its exception (for example a :class:`GenerationError` with
        ``.status_code`` 400 for a prompt longer than a slot's context) and the
        others still run. Invalid ``options`` fail every item alike, so they
        raise at once. Ctrl-C (Kernel → Interrupt) cancels the requests in
        flight, on the server too, and raises ``KeyboardInterrupt``.

        Example:
            >>> results = model.map(["Name a colour.", "Name a fruit."], max_tokens=16, temperature=0)  # doctest: +SKIP
            >>> [r.text if isinstance(r, Completion) else f"failed: {r}" for r in results]  # doctest: +SKIP
            ['Blue.', 'Apple.']
        """
        from rocm_nb.client import _batch
        prompts = self._batch_prompts(prompts)
        jobs, checked = _batch.plan(prompts, chat=chat, options=options)  # bad options raise now, before any I/O
        client = self._client()
        client._close_held_streams()  # here: the requests go out from the batch's own thread
        engine = client._accept(checked, {kind for kind, _ in jobs})  # the server's kind refuses once, for all
        return _batch.run(
            jobs, lambda job, http: client._open_astream(Request(*job, checked, accepted_by=engine), http),
            _batch.workers(concurrency, lambda: client._slots(checked.get("model"))), progress=progress,
            new_http=client._new_ahttp,
        )

    async def amap(
        self,
        prompts: Iterable[Prompt],
        *,
        chat: bool = True,
        concurrency: int | None = None,
        progress: bool = True,
        **options: Unpack[Options],
    ) -> list[Completion | Exception]:
        """Async twin of :meth:`map`; cancelling it cancels the requests in flight.

        Example:
            >>> results = await model.amap(["Hi", "Bye"], max_tokens=8)  # doctest: +SKIP
        """
        import asyncio

        from rocm_nb.client import _batch
        prompts = self._batch_prompts(prompts)
        jobs, checked = _batch.plan(prompts, chat=chat, options=options)  # bad options raise now, before any I/O
        client = await self._aclient()
        engine = await asyncio.to_thread(client._accept, checked, {kind for kind, _ in jobs})
        slots = await asyncio.to_thread(_batch.workers, concurrency, lambda: client._slots(checked.get("model")))
        return await _batch.arun(
            jobs, lambda job, http: self._open_astream(Request(*job, checked, accepted_by=engine), http), slots,
            progress=progress)

    # -- embeddings, reranking, tools (the engines: rocm_nb.client.embeddings, rocm_nb.client.tools) ---------

    def embed(self, texts: str | Sequence[str], *, normalize: bool = True, truncate: bool = False,
              progress: bool | None = None) -> npt.NDArray[np.float32]:
        """Embeddings of ``texts`` (an embedding server: ``LocalModel(..., embedding=True)``).

        A list gives an ``n × dim`` float32 array, a string one vector; rows
        have length 1 unless ``normalize=False``. Texts go over the server's
        slots in chunks, with a progress bar past 64 texts. A text longer than
        a slot's context raises :class:`~rocm_nb.client.embeddings.TextTooLong` naming
        it, unless ``truncate=True`` cuts it to fit.

        Example:
            >>> model.embed(["A cat.", "A dog."]).shape  # doctest: +SKIP
            (2, 384)
        """
        from rocm_nb.client import embeddings
        return embeddings.embed(self._client(), texts, normalize=normalize, truncate=truncate, progress=progress)

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool = True,
                     truncate: bool = False) -> npt.NDArray[np.float32]:
        """Async twin of :meth:`embed`.

        Example:
            >>> (await model.aembed(["A cat."])).shape  # doctest: +SKIP
            (1, 384)
        """
        from rocm_nb.client import embeddings
        return await embeddings.aembed(await self._aclient(), texts, normalize=normalize, truncate=truncate)

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> npt.NDArray[np.float32]:
        """Cosine similarity of the embeddings of ``a`` and ``b``: a number for two strings, else a matrix.

        Example:
            >>> float(model.similarity("A man plays guitar.", "Someone plays the guitar."))  # doctest: +SKIP
            0.87
        """
        from rocm_nb.client.embeddings import cosine

        scores = cosine(self.embed(a), self.embed(b))
        return scores[0, 0] if isinstance(a, str) and isinstance(b, str) else scores

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """``(index, score)`` of the ``documents`` most relevant to ``query``, best first (a ``reranking=True`` server).

        Example:
            >>> model.rerank("guitar", ["A man plays guitar.", "Stocks fell."])  # doctest: +SKIP
            [(0, 3.1), (1, -4.2)]
        """
        from rocm_nb.client import embeddings
        return embeddings.rerank(self._client(), query, documents, top_n)

    def run_tools(self, messages: Sequence[Message], tools: Sequence[Callable[..., Any]], /, *, max_steps: int = 5,
                  mode: Literal["auto", "native", "json"] = "auto", **options: Unpack[Options]) -> ToolRun:
        """Chat with ``tools`` until the model answers: call what it asks for, feed the results back.

        See :func:`rocm_nb.client.tool_loop.run_tools`. Returns a :class:`~rocm_nb.client.tool_loop.ToolRun`
        (``.answer``, ``.messages``: the whole transcript, ``.steps``).

        Example:
            >>> run = model.run_tools([{"role": "user", "content": "What is 6 * 7?"}], [multiply])  # doctest: +SKIP
            >>> run.answer  # doctest: +SKIP
            '6 * 7 is 42.'
        """
        from rocm_nb.client.tool_loop import run_tools
        return run_tools(self, messages, tools, max_steps=max_steps, mode=mode, **options)

    # -- the server's own utilities (llama-server's endpoints, or the OpenAI ones) ----------------

    @overload
    def tokenize(self, text: str, *, add_special: bool = False, pieces: Literal[False] = False) -> list[int]: ...

    @overload
    def tokenize(self, text: str, *, add_special: bool = False, pieces: Literal[True]) -> list[TokenPiece]: ...

    def tokenize(self, text: str, *, add_special: bool = False, pieces: bool = False) -> list[int] | list[TokenPiece]:
        """Token ids of ``text`` (llama-server's ``/tokenize``); with ``pieces=True``, :class:`TokenPiece` s.

        Each piece has the token's id, text and bytes (the server's
        ``with_pieces``); a token that is a fragment of a character has
        U+FFFD as its text and the fragment in its bytes.

        Example:
            >>> model.tokenize("Hello")  # doctest: +SKIP
            [19556]
            >>> model.tokenize("Hi 🌟", pieces=True)[-1]  # doctest: +SKIP
            TokenPiece(id=249, text='\\ufffd', bytes=b'\\x9f')
        """
        client = self._client()
        body = {"content": text, "add_special": add_special, "with_pieces": pieces, **client._model_field()}
        tokens = client._request_json("POST", "/tokenize", json=body)["tokens"]
        return read_pieces(tokens) if pieces else [int(token) for token in tokens]

    def apply_template(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The exact prompt the model's chat template makes of ``messages`` (llama-server's ``/apply-template``).

        ``chat_template_kwargs`` are given to the template, as in a chat
        (``{"enable_thinking": False}``).

        Example:
            >>> model.apply_template([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
            '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        body: dict[str, Any] = {"messages": [dict(m) for m in messages], "add_generation_prompt": add_generation_prompt}
        if chat_template_kwargs is not None:
            check_options({"chat_template_kwargs": chat_template_kwargs})
            body["chat_template_kwargs"] = dict(chat_template_kwargs)
        client = self._client()
        body.update(client._model_field())
        prompt: str = client._request_json("POST", "/apply-template", json=body)["prompt"]
        return prompt

    def n_ctx(self) -> int | None:
        """The context size of one slot, in tokens (``/props``); ``None`` when the server does not say.

        Asked of the server once; ``Completion.context`` compares a reply's
        tokens with it.

        Example:
            >>> model.n_ctx()  # doctest: +SKIP
            2048
        """
        return self._client()._slot_ctx()

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids (llama-server's ``/detokenize``).

        Example:
            >>> model.detokenize([19556])  # doctest: +SKIP
            'Hello'
        """
        client = self._client()
        body = {"tokens": list(tokens), **client._model_field()}
        content: str = client._request_json("POST", "/detokenize", json=body)["content"]
        return content

    def props(self) -> dict[str, Any]:
        """The server's properties (``/props``): chat template, default settings, slots.

        Example:
            >>> model.props()["total_slots"]  # doctest: +SKIP
            1
        """
        props = self._client()._request_json("GET", "/props")
        if not isinstance(props, dict):
            raise StreamProtocolError(f"GET /props answered {type(props).__name__} JSON, not an object: "
                                      f"{str(props)[:120]!r}", body=str(props))
        return props

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``/metrics``, needs ``--metrics``).

        Example:
            >>> model.metrics()["llamacpp:tokens_predicted_total"]  # doctest: +SKIP
            48.0
        """
        return parse_metrics(self._client()._request("GET", "/metrics").text)

    def models(self) -> list[str]:
        """Model ids the server offers (``/v1/models``); ``[]`` from a server without that endpoint.

        Raises GenerationError when the server cannot be reached.

        Example:
            >>> connect("http://127.0.0.1:8080").models()  # doctest: +SKIP
            ['SmolLM2-135M-Instruct.Q4_1.gguf']
        """
        try:
            reply = self._client()._request_json("GET", "/v1/models")
        except GenerationError as exc:
            if exc.status_code == 404:
                return []
            raise
        data = reply.get("data") if isinstance(reply, dict) else None
        return [str(entry.get("id")) for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []

    def health(self) -> bool:
        """True when the server answers ``/health`` with 200 (ready).

        Example:
            >>> model.health()  # doctest: +SKIP
            True
        """
        import httpx

        try:
            return self._client()._http().get("/health").status_code == 200
        except httpx.HTTPError:
            return False
