"""Real GGUF files written with the gguf package, and Hugging Face caches laid out as huggingface_hub does."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np


def write_gguf(path: Path, name: str, *, arch: str = "llama", ctx: int = 2048, template: str | None = None,
               tensors: int = 3, split_max_tensors: int = 0) -> list[Path]:
    """Write a small real GGUF (``tensors`` F16 tensors of 4×8) with the gguf package; return its files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    writer.add_name(name)
    writer.add_context_length(ctx)
    writer.add_block_count(tensors)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if template is not None:
        writer.add_chat_template(template)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.ffn_up.weight", np.full((4, 8), i, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(path) if split_max_tensors else [path]


def hf_snapshot(hub: Path, repo_id: str, commit: str, files: dict[str, Path], refs: Sequence[str] = ("main",)) -> Path:
    """Put files into a Hugging Face cache as huggingface_hub does: content-named blobs, snapshot symlinks, refs."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for relative, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


HUGE_SHAPE = (8192, 28672)  # one FFN matrix of a 70B model
HUGE_COUNT = 80 * 4  # four such matrices in each of 80 layers


def _write_sparse(writer: gguf.GGUFWriter, path: Path,
                  tensors: Sequence[tuple[str, tuple[int, ...], gguf.GGMLQuantizationType]]) -> int:
    """Write ``writer``'s header with ``tensors`` described but their data a hole (sparse); return where data starts.

    Each tensor's data is a multiple of 32 bytes here, so the data is their sizes summed, with no padding.
    """
    total = 0
    for name, shape, kind in tensors:
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        nbytes = int(np.prod(shape)) // block * type_size
        assert nbytes % 32 == 0, (name, nbytes)
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
        total += nbytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    data_start = -(-path.stat().st_size // 32) * 32
    os.truncate(path, data_start + total)
    return data_start


def write_huge_gguf(path: Path) -> int:
    """Write a GGUF as big as a 70B Q4 model, sparse (its tensor data is a hole); return where the data starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("Huge")
    writer.add_context_length(131072)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_array("tokenizer.ggml.tokens", [f"token{i}" for i in range(128_256)])  # a real-sized vocabulary
    q4 = gguf.GGMLQuantizationType.Q4_0
    return _write_sparse(writer, path, [(f"blk.{i // 4}.ffn_{i % 4}.weight", HUGE_SHAPE, q4)
                                        for i in range(HUGE_COUNT)])


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

DEFAULT_PARAMETERS = 134_515_008
"""The default model's (SmolLM2 135M Instruct) parameters, as :func:`write_default_model_header` describes them."""


def write_default_model_header(path: Path) -> Path:
    """A stand-in for the default model's file: its header (SmolLM2 135M Instruct, Q4_1), its tensor data a hole.

    What a reader of headers sees in the real file: a llama of 30 blocks, 576 wide, 9 query and 3 KV heads, a
    trained context of 8192, Q4_1 matrices with a Q8_0 embedding (134,515,008 parameters), a ChatML template.
    For the tests of the model library, which read headers only and run with no model downloaded.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("Smollm2 135M 8k Lc100K Mix1 Ep2")
    writer.add_context_length(8192)
    writer.add_block_count(30)
    writer.add_embedding_length(576)
    writer.add_feed_forward_length(1536)
    writer.add_head_count(9)
    writer.add_head_count_kv(3)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_chat_template(CHATML)
    q4_1, q8_0, f32 = (gguf.GGMLQuantizationType[name] for name in ("Q4_1", "Q8_0", "F32"))
    tensors = [("token_embd.weight", (49152, 576), q8_0), ("output_norm.weight", (576,), f32)]
    for i in range(30):
        tensors += [(f"blk.{i}.attn_norm.weight", (576,), f32), (f"blk.{i}.ffn_norm.weight", (576,), f32),
                    (f"blk.{i}.attn_q.weight", (576, 576), q4_1), (f"blk.{i}.attn_k.weight", (192, 576), q4_1),
                    (f"blk.{i}.attn_v.weight", (192, 576), q4_1), (f"blk.{i}.attn_output.weight", (576, 576), q4_1),
                    (f"blk.{i}.ffn_gate.weight", (1536, 576), q4_1), (f"blk.{i}.ffn_up.weight", (1536, 576), q4_1),
                    (f"blk.{i}.ffn_down.weight", (576, 1536), q4_1)]
    assert sum(int(np.prod(shape)) for _, shape, _ in tensors) == DEFAULT_PARAMETERS
    _write_sparse(writer, path, tensors)
    return path
