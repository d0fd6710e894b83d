"""The client's side of the generation API: what every method reaches the server through.

:class:`~rocm_nb.client._generation.GenerationAPI` is written once for
:class:`~rocm_nb.client.Client` and :class:`~rocm_nb.LocalModel`: each of its
methods asks its ``_client()`` hook for a :class:`Session` (the ``Client``
itself, or a ``LocalModel``'s client on its own server) and speaks through
it. The protocol names that internal contract, so that the generation API,
embeddings and ``map`` depend on it and not on the ``Client`` class.

Example:
    >>> from rocm_nb.client import Client
    >>> session: Session = Client("http://127.0.0.1:9")  # a Client is a Session
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import httpx

    from rocm_nb.client.completion import Kind
    from rocm_nb.client.engines import Engine
    from rocm_nb.client.logprobs import SlotContext
    from rocm_nb.client.request import Request
    from rocm_nb.client.stream import AsyncTokenStream, TokenStream

__all__ = ["Session"]


class Session(Protocol):
    """A client on one server, as the generation API uses it (see the module docstring)."""

    _slot_ctx: SlotContext

    def props(self) -> dict[str, Any]: ...

    def tokenize(self, text: str, *, add_special: bool = False, pieces: Literal[False] = False) -> list[int]: ...

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...

    def _request_json(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def _http(self) -> httpx.Client: ...

    def _ahttp(self) -> httpx.AsyncClient: ...

    def _new_ahttp(self) -> httpx.AsyncClient: ...

    def _payload(self, request: Request) -> dict[str, Any]: ...

    async def _apayload(self, request: Request) -> dict[str, Any]: ...

    def _accept(self, options: Mapping[str, Any], kinds: Collection[Kind]) -> Engine: ...

    def _open_stream(self, request: Request) -> TokenStream: ...

    def _open_astream(self, request: Request, http: httpx.AsyncClient | None = None) -> AsyncTokenStream: ...

    def _close_held_streams(self) -> None: ...

    def _slots(self, model: str | None) -> int | None: ...

    def _model_field(self) -> dict[str, str]: ...
