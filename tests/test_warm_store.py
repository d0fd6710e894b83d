"""The folder of saved prompt caches, without a server: what may be restored, and the disk budget (issue 23, item 2).

The slot files here are shaped as llama.cpp writes them (:mod:`tests.support.warm`);
``tests/test_warm_cache.py`` does the same with the real llama-server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from rocm_nb._options import LoadOptions, plan_server
from rocm_nb.binary import ServerBinary
from rocm_nb.hardware import Hardware
from rocm_nb.modelfiles.catalog import read_info
from rocm_nb.server import ServerConfig
from rocm_nb.server._warm_store import (
    QUARANTINE,
    SAVE_BUDGET,
    Fingerprint,
    WarmStore,
    budget_from,
    read_tokens,
    save_budget,
)
from tests.support.clock import FakeClock
from tests.support.gguf_files import write_gguf
from tests.support.uids import NOBODY, as_nobody
from tests.support.warm import save, slot_file

pytestmark = pytest.mark.unit
BINARY = ServerBinary(Path("/opt/llama/llama-server"), "0", "cpu", "argument", rpc=False)
CPU = Hardware("cpu", (), None, ())
as_root = pytest.mark.usefixtures("needs_root")  # fails, never skips, without root


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A model file and a llama-server file: their identities are what a fingerprint reads."""
    model, binary = tmp_path / "model.gguf", tmp_path / "llama-server"
    model.write_bytes(b"GGUF weights")
    binary.write_bytes(b"a build")
    return model, binary


def fingerprint(model: Path, binary: Path, **changes: object) -> Fingerprint:
    return Fingerprint.of(ServerConfig(binary, model, **{"ctx_size": 4096, **changes}))  # type: ignore[arg-type]


def test_each_difference_in_the_configuration_is_named(files: tuple[Path, Path]) -> None:
    model, binary = files
    saved = fingerprint(model, binary).saved()
    assert fingerprint(model, binary).differences(saved) == []
    assert fingerprint(model, binary, ctx_size=2048).differences(saved) == [
        "it was saved with context 4096 (this server: 2048)"]
    assert fingerprint(model, binary, cache_type_k="q8_0", cache_type_v="q8_0").differences(saved) == [
        "its K cache type was f16 (this server: q8_0)", "its V cache type was f16 (this server: q8_0)"]
    assert fingerprint(model, binary, parallel=2).differences(saved) == ["it was saved with 1 slots (this server: 2)"]
    assert fingerprint(model, binary, env=(("GGML_VK_VISIBLE_DEVICES", "1"),)).differences(saved) == [
        "it was saved with another server environment (devices or backend)"]

    projector = model.with_name("mmproj.gguf")
    projector.write_bytes(b"GGUF projector")
    seeing = fingerprint(model, binary, mmproj=projector)
    assert seeing.differences(saved) == [f"it was saved without an image projector (this server: {projector})"]
    assert fingerprint(model, binary).differences(seeing.saved()) == [
        f"it was saved with the image projector {projector} (this server has none)"]
    projector.write_bytes(b"GGUF another projector")
    assert fingerprint(model, binary, mmproj=projector).differences(seeing.saved()) == [
        "the image projector file has changed since"]

    binary.write_bytes(b"a rebuilt build")  # a rebuilt llama-server at the same path
    assert fingerprint(model, binary).differences(saved) == ["llama-server has been rebuilt or replaced since"]
    binary.write_bytes(b"a build")
    os.utime(binary, ns=(0, saved["server_identity"][3]))
    model.unlink()
    model.write_bytes(b"GGUF other weights")  # a replaced model file: another inode, size and time
    assert fingerprint(model, binary).differences(saved) == ["the model file has changed since"]


def test_the_budget_evicts_the_least_recently_used_first(tmp_path: Path, files: tuple[Path, Path]) -> None:
    clock = FakeClock(1_000_000.0)  # seconds since the epoch, as the manifests hold them
    store = WarmStore(tmp_path / "warm", budget=10**9, clock=clock).open()
    entries = []
    for ctx in (1024, 2048, 3072):  # saved one after the other: 1024 is the oldest
        clock.now += 60
        entries.append(save(store, fingerprint(*files, ctx_size=ctx), body=10_000))
    clock.now += 60
    store.touch(entries[0])  # 1024 was restored since: used most recently
    one = entries[0].file.stat().st_size + entries[0].manifest.stat().st_size

    store.budget = 2 * one + 100
    removed = store.evict()
    assert removed == [entries[1].manifest, entries[1].file]  # 2048: saved before 3072, used before 1024
    assert [e.data["fingerprint"]["ctx_size"] for e in store.entries()] == [1024, 3072]  # newest use first

    store.budget = one + 100
    assert store.evict() == [entries[2].manifest, entries[2].file]
    assert [e.data["fingerprint"]["ctx_size"] for e in store.entries()] == [1024]
    assert store.usage() <= store.budget


def test_what_a_save_left_behind_goes_when_stale(tmp_path: Path, files: tuple[Path, Path]) -> None:
    clock = FakeClock(1_000_000.0)  # seconds since the epoch, as the manifests hold them
    store = WarmStore(tmp_path / "warm", clock=clock).open()
    kept = save(store, fingerprint(*files))
    unfinished = slot_file(store.root / store.partial_name(fingerprint(*files), 0))  # a save cut off at close
    clock.now = unfinished.stat().st_mtime + 60
    assert store.evict() == []  # it may still be being written
    clock.now += 3600
    assert store.evict() == [unfinished]
    assert kept.file.exists()


def test_a_saved_file_is_private_and_replaces_the_previous_one(tmp_path: Path, files: tuple[Path, Path]) -> None:
    store = WarmStore(tmp_path / "warm").open()
    first = save(store, fingerprint(*files), tokens=300)
    second = save(store, fingerprint(*files), tokens=400)
    assert not first.file.exists() and second.file.exists()
    assert [e.tokens for e in store.entries()] == [400]
    assert oct(store.root.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in store.root.iterdir()} == {"0o600"}


def test_a_damaged_file_is_refused_and_set_aside(tmp_path: Path, files: tuple[Path, Path]) -> None:
    store = WarmStore(tmp_path / "warm").open()
    mine = fingerprint(*files)
    entry = save(store, mine)
    assert store.check(entry, mine, 4096) is None

    whole = entry.file.read_bytes()
    entry.file.write_bytes(whole[: len(whole) // 2])  # truncated
    refusal = store.check(entry, mine, 4096)
    assert refusal is not None and refusal.damaged
    assert refusal.why == f"its file holds {len(whole) // 2:,} bytes, its manifest says {len(whole):,} (truncated?)"

    entry.file.write_bytes(os.urandom(len(whole)))  # random bytes of the right size
    refusal = store.check(entry, mine, 4096)
    assert refusal is not None and refusal.damaged and refusal.why.startswith("it is not a llama.cpp slot file")

    store.quarantine(entry, refusal.why)
    assert store.entries() == [] and not entry.file.exists()
    assert sorted(p.name for p in (store.root / QUARANTINE).iterdir()) == [entry.file.name,
                                                                           f"{entry.file.name}.json"]


def test_a_file_others_can_write_is_never_restored(tmp_path: Path, files: tuple[Path, Path]) -> None:
    store = WarmStore(tmp_path / "warm").open()
    mine = fingerprint(*files)
    entry = save(store, mine)
    for mode in (0o620, 0o602):
        entry.file.chmod(mode)
        refusal = store.check(entry, mine, 4096)
        assert refusal is not None and not refusal.damaged  # not set aside: nothing of it is trusted, not even that
        assert refusal.why == f"{entry.file.name} can be written by other users (mode {mode:o})"
    entry.file.chmod(0o600)
    entry.manifest.chmod(0o666)
    assert entry.manifest not in [e.manifest for e in store.entries()]  # a manifest others could write: not read


@as_root
def test_a_file_of_another_user_is_never_restored(files: tuple[Path, Path]) -> None:
    """``nobody`` plants a slot file and its manifest (copies of a real save) in a folder it can write."""
    base = Path(tempfile.mkdtemp(prefix="rocm_nb-warm-"))  # under /tmp, which nobody can traverse
    try:
        base.chmod(0o755)
        store = WarmStore(base / "warm").open()
        mine = fingerprint(*files)
        genuine = save(store, mine)
        contents = {path.name: path.read_bytes() for path in (genuine.file, genuine.manifest)}
        store.remove(genuine)
        store.root.chmod(0o777)  # a folder another user can write, as a careless setup would leave it

        def plant() -> None:
            for name, data in contents.items():
                (store.root / name).write_bytes(data)
                (store.root / name).chmod(0o600)

        as_nobody(plant)
        assert genuine.file.stat().st_uid == NOBODY.pw_uid
        assert store.entries() == []  # its manifest is not this user's: not even read
        refusal = store.check(genuine, mine, 4096)
        assert refusal is not None and not refusal.damaged
        assert refusal.why == f"{genuine.manifest.name} belongs to uid {NOBODY.pw_uid}, not to you"
    finally:
        shutil.rmtree(base)


def test_the_head_of_a_slot_file_gives_its_tokens(tmp_path: Path) -> None:
    assert read_tokens(slot_file(tmp_path / "a.bin", tokens=5), 4096) == [100, 101, 102, 103, 104]
    with pytest.raises(ValueError, match=r"its header claims 5004 tokens, more than its \d+ bytes or the context hold"):
        read_tokens(slot_file(tmp_path / "b.bin", tokens=5000), 4096)
    (tmp_path / "c.bin").write_bytes(slot_file(tmp_path / "c.bin", tokens=5).read_bytes()[:30])
    with pytest.raises(ValueError, match="more than its 30 bytes"):
        read_tokens(tmp_path / "c.bin", 4096)


def test_the_budget_is_read_from_the_environment() -> None:
    assert budget_from({"ROCM_NB_WARM_BUDGET": "0"}) == 0
    with pytest.raises(ValueError, match="ROCM_NB_WARM_BUDGET='two gigs' is not a size"):
        budget_from({"ROCM_NB_WARM_BUDGET": "two gigs"})


def test_the_time_a_teardown_may_spend_saving_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    assert save_budget({}) == SAVE_BUDGET and save_budget({"ROCM_NB_WARM_SAVE_S": "0"}) == 0.0
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ValueError, match=f"ROCM_NB_WARM_SAVE_S must be seconds ≥ 0, such as 1 or 2.5, got '{bad}'"):
            save_budget({"ROCM_NB_WARM_SAVE_S": bad})
    monkeypatch.setenv("ROCM_NB_WARM_SAVE_S", "soon")  # said when the model is planned, not when it closes
    [path] = write_gguf(tmp_path / "m.gguf", "Tiny")
    with pytest.raises(ValueError, match="ROCM_NB_WARM_SAVE_S must be seconds"):
        plan_server(read_info(path), path, BINARY, CPU, LoadOptions())
    assert plan_server(read_info(path), path, BINARY, CPU, LoadOptions(warm_cache=False))[1].slot_save_path is None
