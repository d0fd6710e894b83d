"""What a mock server in a unit test is, told to the client so that it asks nothing before a generation."""

from __future__ import annotations

from rocm_nb.client.engines import Capabilities, ServerInfo

LLAMA_CPP = ServerInfo("llama.cpp", None,
                       Capabilities(logprobs=True, tools=True, grammar=True, slots=1, embeddings=None))
"""A llama-server (one slot): ``Client(..., server=LLAMA_CPP, model="m")`` sends no probe before its requests."""
