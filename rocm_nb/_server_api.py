"""The server utilities every model and client has, and the hooks they reach the server through.

:class:`_ServerAPI` is the base of :class:`~rocm_nb._generation._GenerationAPI`:
``tokenize``, ``detokenize``, ``apply_template``, ``n_ctx``, ``props``,
``metrics``, ``models`` and ``health``, each a request to llama-server's own
endpoints (or the OpenAI ones) through ``_client()``.

Example:
    >>> parse_metrics("llamacpp:requests_processing 1")
    {'llamacpp:requests_processing': 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from rocm_nb.completion import Message, check_options
from rocm_nb.errors import GenerationError, RocmNbError, StreamProtocolError
from rocm_nb.logprobs import TokenPiece, read_pieces

if TYPE_CHECKING:
    from rocm_nb.client import Client

__all__ = ["parse_metrics"]


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


class _ServerAPI:
    """Server utilities, and the hooks through which every method reaches the server.

    ``_client()`` returns the :class:`~rocm_nb.client.Client` to use (a
    ``LocalModel`` starts its server there, on the first request), and
    ``await _aclient()`` is its async twin, which must not block the event
    loop. ``_better_error`` turns a transport failure into a better error (a
    ``LocalModel``: :class:`~rocm_nb.errors.ServerCrashed` when its server died).

    Example:
        >>> from rocm_nb import Client
        >>> issubclass(Client, _ServerAPI)
        True
    """

    def _client(self) -> Client:
        raise NotImplementedError

    async def _aclient(self) -> Client:
        return self._client()

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        return None

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
