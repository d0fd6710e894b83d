"""Embeddings, search and reranking: the real MiniLM (converted from its wheel) on the real llama-server."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rocm_nb import LocalModel, TextTooLong, search
from rocm_nb._options import LoadOptions, plan_server
from rocm_nb.binary import ServerBinary
from rocm_nb.client.embeddings import cosine
from rocm_nb.errors import InvalidModel
from rocm_nb.hardware import Hardware
from rocm_nb.modelfiles.catalog import CATALOGUE, read_info, resolve_model
from tests.support.gguf_files import write_gguf
from tests.support.minibert import MiniBert, WordPiece, source_folder

PAIRS = [  # (sentence, paraphrase): each pair means the same, the pairs are about different things
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this day."),
    ("How do I bake bread at home?", "What is a recipe for homemade bread?"),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("It will rain heavily tomorrow.", "Tomorrow brings a lot of rain."),
    ("She is learning to speak French.", "She studies the French language."),
]
SENTENCES = [s for pair in PAIRS for s in pair]


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalModel]:
    with LocalModel("minilm", embedding=True, parallel=2) as model:
        yield model


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return source_folder(tmp_path_factory.mktemp("minilm-wheel"))


# -- unit --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_pooled_server_gets_each_slot_the_whole_context_and_a_batch_as_large(tmp_path: Path) -> None:
    """Embedding and reranking are decided with the other load options, before the plan (tests/test_load_options)."""
    [path] = write_gguf(tmp_path / "bert.gguf", "Bert", arch="bert", ctx=512)
    binary, cpu = ServerBinary(Path("s"), "0", "cpu", "argument", rpc=False), Hardware("cpu", (), None, ())
    fit, config = plan_server(read_info(path), path, binary, cpu, LoadOptions.of(embedding=True, pooling="cls",
                                                                               parallel=4))
    argv = config.argv(1)
    assert argv[argv.index("-c") + 1] == "2048" == str(fit.ctx_size)
    assert argv[-7:] == ["-b", "512", "-ub", "512", "--embedding", "--pooling", "cls"]
    _, rerank = plan_server(read_info(path), path, binary, cpu, LoadOptions.of(reranking=True, ctx_size=512,
                                                                               parallel=4))
    assert rerank.argv(1)[-5:] == ["-b", "128", "-ub", "128", "--rerank"]


@pytest.mark.unit
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"embedding": True, "pooling": "max", "reranking": False}, "pooling must be one of"),
    ({"embedding": True, "pooling": None, "reranking": True}, "not both"),
    ({"embedding": False, "pooling": "mean", "reranking": False}, "add embedding=True"),
])
def test_the_load_options_refuse_what_the_server_cannot_do(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadOptions.of(**kwargs)  # type: ignore[arg-type]


@pytest.mark.unit
def test_cosine_is_one_for_a_vector_with_itself_and_handles_zero_vectors() -> None:
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    scores = cosine(a, a)
    assert scores.dtype == np.float32
    assert scores[0, 0] == pytest.approx(1.0)
    assert scores[1, 1] == 0.0


# -- the real model ----------------------------------------------------------------------------


@pytest.mark.server
def test_catalogue_minilm_converts_to_a_bert_gguf_with_mean_pooling() -> None:
    info = read_info(resolve_model("minilm"))
    assert (info.architecture, info.embedding_length, info.block_count, info.context_length) == ("bert", 384, 6, 512)
    assert CATALOGUE["minilm"].sha256 == Path(str(resolve_model("minilm")) + ".sha256").read_text().strip()


@pytest.mark.server
def test_server_embeddings_match_an_independent_numpy_forward_pass(embedder: LocalModel, source: Path) -> None:
    reference = MiniBert(source)
    texts = [*SENTENCES[:4], "Tokenisation: naïve café-owners don't über-think!"]
    for text in texts:  # the server's WordPiece agrees with the reference's
        assert embedder.tokenize(text, add_special=True) == reference.tokenizer.encode(text), text
    server = embedder.embed(texts)
    ours = np.stack([reference.embed(t) for t in texts])
    agreement = (server * ours).sum(axis=1)
    assert agreement.min() > 0.999, agreement


@pytest.mark.server
def test_paraphrases_score_above_unrelated_pairs(embedder: LocalModel) -> None:
    vectors = embedder.embed(SENTENCES)
    scores = vectors @ vectors.T
    paraphrase = [scores[2 * i, 2 * i + 1] for i in range(len(PAIRS))]
    unrelated = [scores[a, b] for a, b in itertools.combinations(range(len(SENTENCES)), 2) if a // 2 != b // 2]
    assert min(paraphrase) > max(unrelated), (paraphrase, max(unrelated))


@pytest.mark.server
def test_norms_batches_singles_and_async_agree(embedder: LocalModel) -> None:
    batch = embedder.embed(SENTENCES * 3)  # more than one chunk, over both slots
    assert batch.shape == (36, 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = embedder.embed(SENTENCES[5])
    assert single.shape == (384,)
    assert float(single @ batch[5]) > 0.9999
    assert np.allclose(asyncio.run(embedder.aembed(SENTENCES)), batch[:12], atol=1e-5)
    raw = embedder.embed(SENTENCES[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert float(embedder.similarity(*PAIRS[0])) == pytest.approx(float(batch[0] @ batch[1]), abs=1e-5)


@pytest.mark.server
def test_a_text_over_the_context_is_named_or_truncated(embedder: LocalModel) -> None:
    long = "word " * 700
    with pytest.raises(TextTooLong, match=r"text 2 \('word word.*702 tokens, over .* limit of 512") as caught:
        embedder.embed(["short", "also short", long])
    assert caught.value.index == 2
    assert "truncate=True" in "\n".join(caught.value.__notes__)
    cut = embedder.embed(["short", long], truncate=True)
    assert cut.shape == (2, 384)
    first = embedder.embed(" ".join(["word"] * 510))  # what truncation keeps: the first 510 words
    assert float(cut[1] @ first) > 0.9999


@pytest.mark.server
def test_search_finds_the_paraphrase(embedder: LocalModel) -> None:
    documents = [b for _, b in PAIRS]
    for i, (query, _) in enumerate(PAIRS):
        best = search(query, documents, embedder, k=2)
        assert best[0][0] == i and best[0][1] > best[1][1]


@pytest.mark.server
def test_rerank_against_the_real_server_with_rerank() -> None:
    """The request and reply path of /v1/rerank on the real llama-server.

    No reranker GGUF is on PyPI; the default chat model loads with
    ``--rerank`` (rank pooling over its last token), which exercises the
    real endpoint and its real reply shape, though its scores mean nothing.
    """
    documents = ["A man plays guitar.", "The stock market fell.", "Bread needs flour.", "Cats sleep a lot."]
    with LocalModel("smollm2-135m", reranking=True, ctx_size=512) as reranker:
        ranked = reranker.rerank("guitar music", documents)
        assert sorted(i for i, _ in ranked) == [0, 1, 2, 3]
        assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        assert len(reranker.rerank("guitar music", documents, top_n=2)) == 2


@pytest.mark.unit
def test_the_reference_tokenizer_splits_punctuation_and_accents(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "cafe", "!", "play", "##ing"]))
    assert WordPiece(tmp_path).encode("Café! Playing") == [2, 4, 5, 6, 7, 3]


@pytest.mark.unit
def test_the_converter_refuses_what_is_not_a_bert(tmp_path: Path) -> None:
    from rocm_nb.modelfiles.convert import convert_bert

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(InvalidModel, match="handles BERT only"):
        convert_bert(tmp_path, tmp_path / "x.gguf")
