"""Embeddings, similarity, search and reranking on llama-server (``/v1/embeddings``, ``/v1/rerank``).

In the pinned llama-server ``--embedding`` restricts a server to embeddings,
so an embedding model is a server of its own:
``LocalModel("minilm", embedding=True)`` (pooling: the model's own, or
``pooling="mean"``…); reranking is ``LocalModel(path, reranking=True)``
(``--rerank``). :class:`rocm_nb._options.LoadOptions` turns those options into
the server's configuration and its memory plan.

``embed`` sends the texts in chunks of :data:`CHUNK` over the server's slots
at once (a progress bar past :data:`PROGRESS_AFTER` texts) and returns a NumPy
``float32`` array. Nothing is tokenised before sending: a text longer than a
slot's context is found only when the server refuses its chunk, and then
named (its index, its token count, the limit), or cut to the limit with
``truncate=True`` (the cut text is sent as token ids, keeping the model's
special tokens at both ends).

Example:
    >>> import numpy as np
    >>> a = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    >>> (cosine(a, a) * 10).round().tolist()
    [[10.0, 6.0], [6.0, 10.0]]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rocm_nb.client.request import check_utf8
from rocm_nb.errors import GenerationError, StreamProtocolError, TextTooLong, with_notes

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from rocm_nb.client._session import Session

__all__ = [
    "CHUNK",
    "PROGRESS_AFTER",
    "Embedder",
    "aembed",
    "cosine",
    "embed",
    "rerank",
    "search",
]

CHUNK = 8
"""Texts per ``/v1/embeddings`` request: enough to keep every slot busy, small enough for a smooth progress bar."""

PROGRESS_AFTER = 64
"""More texts than this get a progress bar (``tqdm.auto``)."""

_LIMIT = re.compile(r"(?:batch size: |context size \()(\d+)")


class Embedder(Protocol):
    """What :func:`search` needs: something with ``embed`` (a ``LocalModel`` or ``Client``)."""

    def embed(self, texts: str | Sequence[str], *, normalize: bool = True,
              truncate: bool = False) -> npt.NDArray[np.float32]: ...


def cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Cosine similarity of each row of ``a`` with each row of ``b`` (vectors count as one row).

    Example:
        >>> float(cosine([1, 0], [0, 2])[0, 0])
        0.0
    """
    import numpy as np

    x, y = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    scores: npt.NDArray[np.float32] = (x @ y.T).astype(np.float32)
    return scores


# -- one chunk: payload, reply, errors (shared by the sync and async paths) --------------------


def _payload(chunk: Sequence[str | list[int]], normalize: bool) -> dict[str, Any]:
    return {"input": list(chunk), "encoding_format": "float", "embd_normalize": 2 if normalize else -1}


def _vectors(reply: Any, n: int) -> list[list[float]]:
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list) or len(data) != n:
        raise StreamProtocolError(f"/v1/embeddings answered without {n} embeddings: {str(reply)[:160]!r}",
                                  body=str(reply))
    ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
    return [item["embedding"] for item in ordered]


def _too_long(exc: GenerationError) -> int | None:
    """The token limit a refused chunk ran into, or ``None`` when ``exc`` is another failure."""
    match = _LIMIT.search(str(exc.body or exc))
    return int(match.group(1)) if match and ("too large" in str(exc.body) or "context" in str(exc.body)) else None


def _cut(client: Session, text: str, limit: int) -> list[int]:
    """``text`` as token ids, cut to ``limit`` tokens, with the special tokens at both ends kept."""
    full = client.tokenize(text, add_special=True)
    if len(full) <= limit:
        return full
    bare = client.tokenize(text, add_special=False)
    head = next((k for k in range(len(full) - len(bare) + 1) if full[k:k + len(bare)] == bare), 0)
    tail = full[head + len(bare):]
    return full[:head] + bare[:max(limit - head - len(tail), 1)] + tail


def _explain(client: Session, chunk: Sequence[str | list[int]], start: int, limit: int,
             exc: GenerationError) -> TextTooLong:
    sizes = [len(client.tokenize(t, add_special=True)) if isinstance(t, str) else len(t) for t in chunk]
    worst = max(range(len(chunk)), key=sizes.__getitem__)
    text = chunk[worst]
    preview = (text[:60] + "…") if isinstance(text, str) and len(text) > 60 else text
    return with_notes(TextTooLong(
        f"text {start + worst} ({preview!r}) is {sizes[worst]} tokens, over the embedding server's "
        f"limit of {limit} tokens per text", index=start + worst, status_code=exc.status_code, body=exc.body),
        "Pass truncate=True to embed only its first tokens, split it into shorter passages, "
        "or start the server with a larger ctx_size (at most the model's trained context).")


def _embed_chunk(client: Session, chunk: Sequence[str], start: int, normalize: bool,
                 truncate: bool) -> list[list[float]]:
    try:
        return _vectors(client._request_json("POST", "/v1/embeddings", json=_payload(chunk, normalize)), len(chunk))
    except GenerationError as exc:
        limit = _too_long(exc)
        if limit is None:
            raise
        if not truncate:
            raise _explain(client, chunk, start, limit, exc) from None
        cut = [_cut(client, text, limit) for text in chunk]
        return _vectors(client._request_json("POST", "/v1/embeddings", json=_payload(cut, normalize)), len(cut))


def _chunks(texts: Sequence[str]) -> list[tuple[int, Sequence[str]]]:
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("embed() takes a string or a list of strings")
    check_utf8(list(texts), "texts")
    return [(i, texts[i:i + CHUNK]) for i in range(0, len(texts), CHUNK)]


def _stack(texts: str | Sequence[str], parts: list[list[list[float]]]) -> npt.NDArray[np.float32]:
    import numpy as np

    rows = [row for part in parts for row in part]
    array = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    return array[0] if isinstance(texts, str) else array


def _slots(client: Session) -> int:
    try:
        return max(int(client.props().get("total_slots") or 1), 1)
    except (GenerationError, ValueError, TypeError):
        return 1


def embed(client: Session, texts: str | Sequence[str], *, normalize: bool = True, truncate: bool = False,
          concurrency: int | None = None, progress: bool | None = None) -> npt.NDArray[np.float32]:
    """What ``model.embed`` does (see :meth:`~rocm_nb.client._generation._GenerationAPI.embed`)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    chunks = _chunks(items)
    if not chunks:
        raise ValueError("embed() needs at least one text")
    workers = concurrency or _slots(client)
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    show = len(items) > PROGRESS_AFTER if progress is None else progress
    with tqdm(total=len(items), desc="embed", unit="text", disable=not show) as bar, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rocm_nb-embed") as pool:
        def one(job: tuple[int, Sequence[str]]) -> list[list[float]]:
            vectors = _embed_chunk(client, job[1], job[0], normalize, truncate)
            bar.update(len(job[1]))
            return vectors

        parts = list(pool.map(one, chunks))
    return _stack(texts, parts)


async def aembed(client: Session, texts: str | Sequence[str], *, normalize: bool = True, truncate: bool = False,
                 concurrency: int | None = None) -> npt.NDArray[np.float32]:
    """Async twin of :func:`embed`: the chunks go out from this loop, at most ``concurrency`` at a time."""
    import asyncio

    items = [texts] if isinstance(texts, str) else list(texts)
    chunks = _chunks(items)
    if not chunks:
        raise ValueError("embed() needs at least one text")
    gate = asyncio.Semaphore(concurrency if concurrency else await asyncio.to_thread(_slots, client))
    http = client._ahttp()

    async def one(start: int, chunk: Sequence[str]) -> list[list[float]]:
        from rocm_nb.client.stream import http_error

        async with gate:
            response = await http.post("/v1/embeddings", json=_payload(chunk, normalize))
        if not response.is_error:
            return _vectors(response.json(), len(chunk))
        if _too_long(http_error(response, response.text)) is None:
            raise http_error(response, response.text)
        return await asyncio.to_thread(_embed_chunk, client, chunk, start, normalize, truncate)

    return _stack(texts, list(await asyncio.gather(*(one(start, chunk) for start, chunk in chunks))))


def search(query: str, documents: Sequence[str], embedder: Embedder, k: int = 5, *,
           vectors: npt.ArrayLike | None = None) -> list[tuple[int, float]]:
    """The ``k`` documents nearest to ``query`` by cosine similarity: ``(index, score)`` pairs, best first.

    ``vectors`` are the documents' embeddings when you have them already
    (from ``embedder.embed(documents)``): pass them to search many times
    without embedding the documents again.

    Example:
        >>> docs = ["The cat sat on the mat.", "Stocks fell sharply.", "A kitten is resting on a rug."]
        >>> search("a cat lying down", docs, embedder, k=2)  # doctest: +SKIP
        [(2, 0.61), (0, 0.55)]
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not documents:
        return []
    matrix = embedder.embed(list(documents)) if vectors is None else vectors
    scores = cosine(embedder.embed(query), matrix)[0]
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:k]
    return [(i, float(scores[i])) for i in order]


def rerank(client: Session, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
    """What ``model.rerank`` does: ``/v1/rerank`` (Jina format), as ``(index, score)`` pairs, best first."""
    docs = list(documents)
    if not isinstance(query, str) or any(not isinstance(d, str) for d in docs):
        raise TypeError("rerank() takes a query string and a list of document strings")
    if not docs:
        return []
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    reply = client._request_json("POST", "/v1/rerank", json={"query": query, "documents": docs,
                                                             "top_n": top_n or len(docs)})
    results = reply.get("results") if isinstance(reply, dict) else None
    if not isinstance(results, list):
        raise StreamProtocolError(f"/v1/rerank answered without results: {str(reply)[:160]!r}", body=str(reply))
    pairs = [(int(r["index"]), float(r.get("relevance_score", r.get("score", 0.0)))) for r in results]
    return sorted(pairs, key=lambda pair: -pair[1])[: top_n or len(docs)]

