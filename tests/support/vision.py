"""A tiny vision model for the tests: the default model with a projector of random weights, written with gguf.

No small vision model ships in a PyPI wheel (the small GGUFs there are
text-only), and nothing may be downloaded from elsewhere, so the tests make
one. What they assert holds whatever the weights: the server loads the
projector, an image costs its tokens, different pixels change the logits.

**The projector type is ``mlp``** (LLaVA 1.5's: a ViT, then two linear layers
with a GELU between them), the smallest that the pinned llama-server
supports with nothing around it, because:

* its preprocessing is a fixed square resize (``image_size``), so an image
  costs exactly ``(image_size / patch_size)²`` tokens, whatever its size;
* it puts no marker tokens around an image (``idefics3``, SmolVLM's real type,
  needs ``<fake_token_around_image>``, ``<global-img>`` and ``<row_i_col_j>``
  in the vocabulary, and cuts a large image into tiles plus a global view,
  so the count depends on the image's size);
* with two blocks it runs one transformer layer (LLaVA takes the
  second-to-last layer's output), a few kilobytes of weights.

**The text model is the default test model** (SmolLM2-135M-Instruct):
a projector must project into the text model's embedding width, 576 here,
and reusing it gives the tiny model a real tokenizer and chat template (and
the server already has it). SmolVLM-256M, the catalogue's real vision
model, is built on the same 576-wide SmolLM2 family.

Example:
    >>> model, mmproj = write_tiny_vlm(tmp_path)  # doctest: +SKIP
    >>> LocalModel(model, mmproj=mmproj)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model

IMAGE_SIZE = 32
"""The tiny projector's image size (pixels per side): images are scaled to fit it."""
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
"""What one image costs in the prompt: 16 tokens."""
TEXT_EMBEDDING = 576
"""The default model's embedding width, which the projector's output must match."""


def write_projector(path: Path, *, projection_dim: int = TEXT_EMBEDDING, image_size: int = IMAGE_SIZE,
                    patch_size: int = PATCH_SIZE, embedding: int = 32, feed_forward: int = 64, hidden: int = 64,
                    blocks: int = 2, heads: int = 2, seed: int = 0, dtype: type = np.float32) -> Path:
    """Write an ``mlp`` projector GGUF of random weights to ``path`` (see the module docstring).

    ``projection_dim`` is the width it projects to (a text model of another
    width refuses it); the other sizes shape the ViT (the memory estimate's
    measurements use larger ones).
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name("rocm_nb tiny projector (random weights)")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype is np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("mlp")
    writer.add_vision_image_size(image_size)
    writer.add_vision_patch_size(patch_size)
    writer.add_vision_embedding_length(embedding)
    writer.add_vision_feed_forward_length(feed_forward)
    writer.add_vision_block_count(blocks)
    writer.add_vision_head_count(heads)
    writer.add_vision_projection_dim(projection_dim)
    writer.add_vision_attention_layernorm_eps(1e-5)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(dtype)

    def norm(name: str) -> None:
        writer.add_tensor(f"{name}.weight", np.ones(embedding, np.float32))
        writer.add_tensor(f"{name}.bias", np.zeros(embedding, np.float32))

    def linear(name: str, out: int, into: int) -> None:
        writer.add_tensor(f"{name}.weight", weights(out, into))  # ggml's ne is [into, out]
        writer.add_tensor(f"{name}.bias", weights(out).astype(np.float32))

    writer.add_tensor("v.patch_embd.weight", weights(embedding, 3, patch_size, patch_size))
    writer.add_tensor("v.patch_embd.bias", weights(embedding).astype(np.float32))
    writer.add_tensor("v.position_embd.weight", weights((image_size // patch_size) ** 2, embedding))
    norm("v.pre_ln")
    for block in range(blocks):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            linear(f"v.blk.{block}.{name}", embedding, embedding)
        norm(f"v.blk.{block}.ln1")
        norm(f"v.blk.{block}.ln2")
        linear(f"v.blk.{block}.ffn_up", feed_forward, embedding)
        linear(f"v.blk.{block}.ffn_down", embedding, feed_forward)
    linear("mm.0", hidden, embedding)
    linear("mm.2", projection_dim, hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_vlm(folder: Path) -> tuple[Path, Path]:
    """``(model_path, mmproj_path)``: the default model and a tiny projector written into ``folder`` for it."""
    return resolve_model(DEFAULT_MODEL), write_projector(folder / "mmproj-tiny.gguf")
