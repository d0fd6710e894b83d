"""The generation API, written once for :class:`~rocm_nb.client.Client` and :class:`~rocm_nb.LocalModel`.

``_GenerationAPI`` holds every public generation method (``generate``,
``stream``, ``chat``, ``chat_stream``, their async twins, ``map``/``amap``,
embeddings, reranking, tools and the teaching widgets); it builds on
:class:`~rocm_nb._server_api._ServerAPI`, which holds the server utilities
(``tokenize``, ``apply_template``, ``props``…) and the hooks every method
reaches the server through: ``_client()``
for sync code and ``await _aclient()`` for async code. A ``Client`` answers
with itself; a ``LocalModel`` starts its server there on the first request,
in a worker thread for async code. That is why ``LocalModel`` composes a
``Client`` instead of inheriting from it, and neither class copies the other.

Example:
    >>> [base.__name__ for base in _GenerationAPI.__mro__]
    ['_GenerationAPI', '_ServerAPI', 'object']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from rocm_nb._batch import Prompt, adrain
from rocm_nb._server_api import _ServerAPI
from rocm_nb.completion import Completion, Kind, Message, Options, build_payload
from rocm_nb.stream import Accumulator, AsyncTokenStream, TokenStream

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import numpy.typing as npt

    from rocm_nb.explore import NextTokenExplorer
    from rocm_nb.playground import SamplerPlayground
    from rocm_nb.token_view import TokenView
    from rocm_nb.tools import ToolRun

__all__: list[str] = []


class _GenerationAPI(_ServerAPI):
    """The generation API, shared by :class:`Client` and :class:`~rocm_nb.LocalModel`.

    Every public method reaches the server through one of two hooks, so the
    API is written once: ``_client()`` returns the :class:`Client` to use
    (a ``LocalModel`` starts its server there, on the first request), and
    ``await _aclient()`` is its async twin, which must not block the event
    loop (a ``LocalModel`` starts its server in a worker thread).
    ``_better_error`` turns a transport failure into a better error (a
    ``LocalModel``: :class:`~rocm_nb.errors.ServerCrashed` when its server died).

    ``generate``/``stream`` take a prompt string (``/v1/completions``);
    ``chat``/``chat_stream`` take messages and let the server apply the
    model's chat template (``/v1/chat/completions``). Each has an async twin
    (``agenerate``, ``astream``, ``achat``, ``achat_stream``); ``astream``
    and ``achat_stream`` do nothing until iterated.

    Example:
        >>> from rocm_nb import Client, LocalModel
        >>> issubclass(Client, _GenerationAPI) and issubclass(LocalModel, _GenerationAPI)
        True
    """

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _endpoint(kind: Kind) -> str:
        return "/v1/chat/completions" if kind == "chat" else "/v1/completions"

    def _open_astream(
        self,
        kind: Kind,
        prompt: str | Sequence[Message],
        options: Mapping[str, Any],
        http: httpx.AsyncClient | None = None,
    ) -> AsyncTokenStream:
        """A stream that starts nothing until it is iterated; ``http`` is a batch's own async client."""
        build_payload(kind, prompt, options)  # a bad prompt or options fail here, before any I/O
        endpoint = self._endpoint(kind)

        async def open_response() -> httpx.Response:
            client = await self._aclient()
            payload = await client._apayload(kind, prompt, options)
            client._close_held_streams()  # a sync stream this thread left open ends first (see stream())
            stream.slot_ctx = client._slot_ctx
            session = http or client._ahttp()
            return await session.send(session.build_request("POST", endpoint, json=payload), stream=True)

        stream = AsyncTokenStream(open_response, Accumulator(kind, logprobs=bool(options.get("logprobs"))),
                                  self._better_error)
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
        return self._client()._open_stream("completion", prompt, options)

    def generate(self, prompt: str, **options: Unpack[Options]) -> Completion:
        """Continue ``prompt`` and return the whole :class:`Completion`.

        Example:
            >>> model.generate("2 + 2 =", max_tokens=4, temperature=0).text  # doctest: +SKIP
            ' 4'
        """
        return self._drain(self.stream(prompt, **options))

    def chat_stream(self, messages: Sequence[Message], **options: Unpack[Options]) -> TokenStream:
        """Stream the assistant's reply to ``messages`` as text pieces (what closes it: :meth:`stream`).

        Example:
            >>> for piece in model.chat_stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._client()._open_stream("chat", messages, options)

    def chat(self, messages: Sequence[Message], **options: Unpack[Options]) -> Completion:
        """Return the assistant's reply to ``messages``.

        Example:
            >>> model.chat([{"role": "user", "content": "Hi!"}]).text  # doctest: +SKIP
            'Hello! How can I help you today?'
        """
        return self._drain(self.chat_stream(messages, **options))

    def astream(self, prompt: str, **options: Unpack[Options]) -> AsyncTokenStream:
        """Async twin of :meth:`stream`.

        Example:
            >>> async for piece in model.astream("The sky is"):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._open_astream("completion", prompt, options)

    async def agenerate(self, prompt: str, **options: Unpack[Options]) -> Completion:
        """Async twin of :meth:`generate`.

        Example:
            >>> (await model.agenerate("2 + 2 =", max_tokens=4)).text  # doctest: +SKIP
        """
        return await adrain(self.astream(prompt, **options))

    def achat_stream(self, messages: Sequence[Message], **options: Unpack[Options]) -> AsyncTokenStream:
        """Async twin of :meth:`chat_stream`.

        Example:
            >>> async for piece in model.achat_stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._open_astream("chat", messages, options)

    async def achat(self, messages: Sequence[Message], **options: Unpack[Options]) -> Completion:
        """Async twin of :meth:`chat`.

        Example:
            >>> (await model.achat([{"role": "user", "content": "Hi"}])).text  # doctest: +SKIP
        """
        return await adrain(self.achat_stream(messages, **options))

    # -- batches (the engine is rocm_nb._batch) --------------------------------------------

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
        not say, :data:`~rocm_nb.engines.DEFAULT_CONCURRENCY`), with
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
        from rocm_nb import _batch

        client = self._client()
        client._close_held_streams()  # here: the requests go out from the batch's own thread
        jobs = _batch.plan(prompts, chat=chat, options=options, check=client._payload)
        return _batch.run(
            jobs, lambda job, http: client._open_astream(*job, options, http),
            _batch.workers(concurrency, lambda: client._slots(options.get("model"))), progress=progress,
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

        from rocm_nb import _batch

        client = await self._aclient()
        jobs = await asyncio.to_thread(_batch.plan, prompts, chat=chat, options=options, check=client._payload)
        slots = await asyncio.to_thread(_batch.workers, concurrency, lambda: client._slots(options.get("model")))
        return await _batch.arun(jobs, lambda job, http: self._open_astream(*job, options, http), slots,
                                 progress=progress)

    # -- embeddings, reranking, tools (the engines: rocm_nb.embeddings, rocm_nb.tools) ---------

    def embed(self, texts: str | Sequence[str], *, normalize: bool = True, truncate: bool = False,
              progress: bool | None = None) -> npt.NDArray[np.float32]:
        """Embeddings of ``texts`` (an embedding server: ``LocalModel(..., embedding=True)``).

        A list gives an ``n × dim`` float32 array, a string one vector; rows
        have length 1 unless ``normalize=False``. Texts go over the server's
        slots in chunks, with a progress bar past 64 texts. A text longer than
        a slot's context raises :class:`~rocm_nb.embeddings.TextTooLong` naming
        it, unless ``truncate=True`` cuts it to fit.

        Example:
            >>> model.embed(["A cat.", "A dog."]).shape  # doctest: +SKIP
            (2, 384)
        """
        from rocm_nb import embeddings

        return embeddings.embed(self._client(), texts, normalize=normalize, truncate=truncate, progress=progress)

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool = True,
                     truncate: bool = False) -> npt.NDArray[np.float32]:
        """Async twin of :meth:`embed`.

        Example:
            >>> (await model.aembed(["A cat."])).shape  # doctest: +SKIP
            (1, 384)
        """
        from rocm_nb import embeddings

        return await embeddings.aembed(await self._aclient(), texts, normalize=normalize, truncate=truncate)

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> npt.NDArray[np.float32]:
        """Cosine similarity of the embeddings of ``a`` and ``b``: a number for two strings, else a matrix.

        Example:
            >>> float(model.similarity("A man plays guitar.", "Someone plays the guitar."))  # doctest: +SKIP
            0.87
        """
        from rocm_nb.embeddings import cosine

        scores = cosine(self.embed(a), self.embed(b))
        return scores[0, 0] if isinstance(a, str) and isinstance(b, str) else scores

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """``(index, score)`` of the ``documents`` most relevant to ``query``, best first (a ``reranking=True`` server).

        Example:
            >>> model.rerank("guitar", ["A man plays guitar.", "Stocks fell."])  # doctest: +SKIP
            [(0, 3.1), (1, -4.2)]
        """
        from rocm_nb import embeddings

        return embeddings.rerank(self._client(), query, documents, top_n)

    def run_tools(self, messages: Sequence[Message], tools: Sequence[Any], *, max_steps: int = 5,
                  **options: Any) -> ToolRun:
        """Chat with ``tools`` until the model answers: call what it asks for, feed the results back.

        See :func:`rocm_nb.tools.run_tools`. Returns a :class:`~rocm_nb.tools.ToolRun`
        (``.answer``, ``.messages``: the whole transcript, ``.steps``).

        Example:
            >>> run = model.run_tools([{"role": "user", "content": "What is 6 * 7?"}], [multiply])  # doctest: +SKIP
            >>> run.answer  # doctest: +SKIP
            '6 * 7 is 42.'
        """
        from rocm_nb import tools as tool_calls

        return tool_calls.run_tools(self, messages, tools, max_steps=max_steps, **options)

    # -- teaching widgets (rocm_nb.explore, rocm_nb.playground, rocm_nb.token_view) --------------

    def explore(self, prompt: str, **kw: Any) -> NextTokenExplorer:
        """The next-token explorer on ``prompt``: top-K next tokens as bars, click one to extend the text.

        Keywords: ``k``, ``temperature``, ``chat`` (:class:`~rocm_nb.explore.NextTokenExplorer`).

        Example:
            >>> model.explore("The capital of France is", k=5)  # doctest: +SKIP
        """
        from rocm_nb.explore import NextTokenExplorer

        return NextTokenExplorer(self, prompt, **kw)

    def playground(self, prompt: str, **kw: Any) -> SamplerPlayground:
        """The sampler playground on ``prompt``: top-k, top-p, min-p and temperature on the real distribution.

        Keywords: ``k``, ``n``, ``max_tokens``, ``chat`` and the sliders' starting values
        (:class:`~rocm_nb.playground.SamplerPlayground`).

        Example:
            >>> model.playground("My favourite colour is", top_k=5)  # doctest: +SKIP
        """
        from rocm_nb.playground import SamplerPlayground

        return SamplerPlayground(self, prompt, **kw)

    def token_view(self, text_or_messages: str | Sequence[Message]) -> TokenView:
        """Token pills with ids for a text, or chat messages as the chat template renders them.

        Example:
            >>> model.token_view([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
        """
        from rocm_nb.token_view import TokenView

        return TokenView(self, text_or_messages)
