"""A sentence-transformers BERT (safetensors) to GGUF, with NumPy and the ``gguf`` package only.

llama.cpp's own ``convert_hf_to_gguf.py`` needs PyTorch and transformers;
this converter needs neither, for the one family it handles: BERT encoders
saved by sentence-transformers (``BertModel`` in ``config.json``, a
WordPiece ``vocab.txt``, a ``1_Pooling/config.json``), such as
``sentence-transformers/all-MiniLM-L6-v2``. The facts it follows were read
from the pinned llama.cpp (``conversion/bert.py``, ``src/llama-vocab.cpp``):

* tensor names come from ``gguf``'s own name map for ``MODEL_ARCH.BERT``
  (``encoder.layer.0.attention.self.query.weight`` → ``blk.0.attn_q.weight``);
  ``position_ids`` and the unused ``pooler`` are left out;
* the vocabulary is tokenizer model ``bert`` (WordPiece): a word-initial
  piece gets the phantom space ``▁`` in front, a ``##`` continuation loses
  its ``##``, and the special ``[CLS]``, ``[SEP]``… stay as they are;
* attention is not causal, and the pooling type comes from the
  sentence-transformers pooling config (mean for MiniLM).

Weights are written as they are stored (float32), so the GGUF computes what
the source model computes. Safetensors files are read with NumPy (an
8-byte header length, a JSON header, raw little-endian arrays).

Example:
    >>> phantom("##ing", control=False), phantom("play", control=False), phantom("[CLS]", control=True)
    ('ing', '▁play', '[CLS]')
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rocm_nb.errors import InvalidModel

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["convert_bert", "phantom", "read_safetensors"]

_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}
_SPECIAL = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
_POOLING = {"pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS", "pooling_mode_lasttoken": "LAST"}


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a ``.safetensors`` file as a NumPy array (memory-mapped, not copied).

    Example:
        >>> weights = read_safetensors("model.safetensors")  # doctest: +SKIP
        >>> weights["embeddings.word_embeddings.weight"].shape  # doctest: +SKIP
        (30522, 384)
    """
    import numpy as np

    file = Path(path)
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidModel(f"{file} is not a safetensors file (its header is not JSON)") from None
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + length)
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in _DTYPES:
            raise InvalidModel(f"{file}: tensor {name} has dtype {spec['dtype']}, which this converter does not read")
        start, end = spec["data_offsets"]
        tensors[name] = data[start:end].view(_DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return tensors


def phantom(token: str, *, control: bool) -> str:
    """A WordPiece token as llama.cpp's ``bert`` vocabulary spells it (see the module docstring)."""
    if control:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _pooling(source: Path) -> str:
    modules = json.loads((source / "modules.json").read_text()) if (source / "modules.json").is_file() else []
    folder = next((m["path"] for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if folder is None:
        raise InvalidModel(f"{source} has no sentence-transformers pooling module (modules.json); "
                           "this converter handles sentence-transformers models only")
    config = json.loads((source / folder / "config.json").read_text())
    for key, name in _POOLING.items():
        if config.get(key):
            return name
    raise InvalidModel(f"{source}: pooling {config} is not mean, CLS or last-token, which llama.cpp supports")


def convert_bert(source: str | os.PathLike[str], target: str | os.PathLike[str], *, name: str = "") -> Path:
    """Write the sentence-transformers BERT in folder ``source`` as a GGUF file ``target``; return ``target``.

    ``source`` holds ``config.json``, ``model.safetensors``, ``vocab.txt``,
    ``modules.json`` and the pooling config, as on the Hugging Face hub.
    Raises :class:`~rocm_nb.errors.InvalidModel` for anything else.

    Example:
        >>> convert_bert("all-MiniLM-L6-v2/", "all-MiniLM-L6-v2.gguf")  # doctest: +SKIP
        PosixPath('all-MiniLM-L6-v2.gguf')
    """
    import gguf

    folder, out = Path(source), Path(target)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise InvalidModel(f"{folder} holds a {config.get('model_type')!r} model; this converter handles BERT only")
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(vocab) != config["vocab_size"]:
        raise InvalidModel(f"{folder}/vocab.txt has {len(vocab)} tokens, config.json says {config['vocab_size']}")
    blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)

    writer = gguf.GGUFWriter(out, "bert")
    writer.add_name(name or folder.name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(blocks)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType[_pooling(folder)])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    controls = [token in _SPECIAL for token in vocab]
    writer.add_token_type_count(int(config.get("type_vocab_size", 2)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([phantom(t, control=c) for t, c in zip(vocab, controls, strict=True)])
    writer.add_token_types([gguf.TokenType.CONTROL if c else gguf.TokenType.NORMAL for c in controls])
    ids = {token: i for i, token in enumerate(vocab)}
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)

    for hf_name, array in read_safetensors(folder / "model.safetensors").items():
        mapped = names.get_name(hf_name.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
        if mapped is None:
            if hf_name.endswith("position_ids") or hf_name.startswith("pooler."):
                continue
            raise InvalidModel(f"{folder}: tensor {hf_name} has no BERT name in GGUF; is this a plain BertModel?")
        writer.add_tensor(mapped, array.astype("<f4"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
