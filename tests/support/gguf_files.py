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


def write_huge_gguf(path: Path) -> int:
    """Write a GGUF as big as a 70B Q4 model, sparse (its tensor data is a hole); return where the data starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("Huge")
    writer.add_context_length(131072)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_array("tokenizer.ggml.tokens", [f"token{i}" for i in range(128_256)])  # a real-sized vocabulary
    q4 = gguf.GGMLQuantizationType.Q4_0
    block, type_size = gguf.GGML_QUANT_SIZES[q4]
    nbytes = HUGE_SHAPE[0] * HUGE_SHAPE[1] // block * type_size
    for i in range(HUGE_COUNT):
        writer.add_tensor_info(f"blk.{i // 4}.ffn_{i % 4}.weight", HUGE_SHAPE, np.dtype(np.float32), nbytes,
                               raw_dtype=q4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    data_start = -(-path.stat().st_size // 32) * 32
    os.truncate(path, data_start + HUGE_COUNT * nbytes)
    return data_start
