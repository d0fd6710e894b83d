"""Saved prompt caches for tests: slot files shaped as llama.cpp writes them, and a model whose cache cannot be reused.

:func:`slot_file` writes what the store checks (llama.cpp's sequence-state
head, then bytes standing for the KV cache); the server tests use the files
the real llama-server writes. :func:`write_swa_gguf` writes a real, tiny
sliding-window model (llama.cpp's ``cohere2`` architecture: three
sliding-window layers and one global, random weights, SmolLM2's tokenizer):
llama-server loads it, restores a saved slot into it, and then reads the
whole prompt again, as it does for Gemma 3.
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np

from rocm_nb.server._warm_store import Entry, Fingerprint, WarmStore

SEQ_MAGIC, SEQ_VERSION = 0x67677371, 3


def slot_file(path: Path, tokens: int = 200, body: int = 4096) -> Path:
    """A slot file: the head llama-server writes for ``tokens`` tokens (packed), then ``body`` bytes."""
    packed = [-1, 1, tokens, *range(100, 100 + tokens), 0]
    path.write_bytes(struct.pack(f"<III{len(packed)}i", SEQ_MAGIC, SEQ_VERSION, len(packed), *packed) + bytes(body))
    return path


def save(store: WarmStore, fingerprint: Fingerprint, slot: int = 0, tokens: int = 200, body: int = 4096,
         seconds: float = 0.01) -> Entry:
    """What a save leaves: llama-server's file under the name the store gave, then the store's commit."""
    name = store.partial_name(fingerprint, slot)
    written = slot_file(store.root / name, tokens, body)
    entry = store.commit(fingerprint, slot, name, tokens=tokens, size=written.stat().st_size, seconds=seconds,
                         model_name=Path(fingerprint.model).name)
    assert entry is not None
    return entry


def write_swa_gguf(path: Path, tokenizer_from: Path, *, window: int = 32) -> Path:
    """A tiny ``cohere2`` model (4 layers, a ``window``-token sliding window) with ``tokenizer_from``'s vocabulary."""
    source = gguf.GGUFReader(tokenizer_from)
    writer = gguf.GGUFWriter(path, "cohere2")
    for name, field in source.fields.items():
        if name.startswith("tokenizer."):
            kind = field.types[0]
            if kind == gguf.GGUFValueType.ARRAY:
                writer.add_array(name, field.contents())
            else:
                writer.add_key_value(name, field.contents(), kind)
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    width, layers, heads, ffn = 64, 4, 4, 128
    writer.add_name("tiny-sliding-window")
    writer.add_context_length(4096)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_eps(1e-5)
    writer.add_sliding_window(window)
    writer.add_logit_scale(1.0)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)

    def weights(name: str, rows: int, cols: int) -> None:
        writer.add_tensor(name, (rng.standard_normal((cols, rows)) * 0.05).astype(np.float32))

    weights("token_embd.weight", width, vocab)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            weights(f"blk.{i}.{part}.weight", width, width)
        weights(f"blk.{i}.ffn_gate.weight", width, ffn)
        weights(f"blk.{i}.ffn_up.weight", width, ffn)
        weights(f"blk.{i}.ffn_down.weight", ffn, width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
