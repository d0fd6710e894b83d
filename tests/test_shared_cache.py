"""A shared cache never runs another user's program, and the sources and models it holds are checked (issue 21, item 3).

The cache lives in a world-traversable folder under /tmp, as a shared cache
would. ``nobody`` (a forked child of the test that drops to uid 65534:
:mod:`tests.support.uids`) plants a "newer" install whose llama-server is a
wrapper that leaves a mark when run; the test, as root, must skip it, warn
with the path and the fix, and never run it. The programs are shell scripts
that answer ``--version`` as llama-server does: ``find_server`` runs nothing
else. The tampered sdist is a tiny CMake project that would build and
install if it were trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from rocm_nb import BinaryNotFound, BuildError
from rocm_nb.binary import LLAMA_CPP_PYTHON_SHA256, LLAMA_CPP_PYTHON_VERSION, find_server
from rocm_nb.binary._build import _verified_copy, install_server
from rocm_nb.cli import main
from rocm_nb.errors import InvalidModel
from rocm_nb.modelfiles.catalog import CATALOGUE, DEFAULT_MODEL, verify
from tests.support.sdist import SDIST
from tests.support.uids import NOBODY, as_nobody
from tests.test_build import runs_without_crashing, tiny_llama_cpp

as_root = pytest.mark.usefixtures("needs_root")  # fails, never skips, without root
NOGROUP = NOBODY.pw_gid
"""nobody's own group: writable by that group means writable by nobody."""


class Cache:
    """A cache under a world-traversable folder: ``root``, ``servers``, and a place for marks."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "cache"
        self.servers = self.root / "servers"
        self.servers.mkdir(parents=True, mode=0o755)
        self.root.chmod(0o755)
        self.servers.chmod(0o755)
        self.mark = base / "marks" / "planted-program-ran"
        self.mark.parent.mkdir(mode=0o777)
        self.mark.parent.chmod(0o777)  # the planted program may run as anyone: it must be able to leave its mark
        self.environ = {"ROCM_NB_CACHE": str(self.root), "PATH": ""}

    def install(self, name: str, version: str, *, built_at: str = "2026-01-01T00:00:00+00:00",
                marks: bool = False) -> Path:
        """An install whose llama-server answers ``--version`` (and, if ``marks``, leaves the mark)."""
        directory = self.servers / name
        directory.mkdir(exist_ok=True)
        program = directory / "llama-server"
        program.write_text("#!/bin/sh\n" + (f"/usr/bin/touch {self.mark}\n" if marks else "")
                           + f"echo 'version: {version}'\n")
        program.chmod(0o755)
        (directory / "manifest.json").write_text(json.dumps({
            "version": version, "backend": "cpu", "flags": [], "rpc": False, "built_at": built_at,
            "variant": "native", "cpu_features": []}))
        return directory

    def find(self) -> tuple[str, list[str]]:
        """Where find_server goes now (or why it found nothing), and the warnings it gave."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = str(find_server(environ=self.environ, cpu=frozenset()).path)
            except BinaryNotFound as exc:
                found = str(exc)
        return found, [str(w.message) for w in caught]


@pytest.fixture
def cache() -> Iterator[Cache]:
    base = Path(tempfile.mkdtemp(prefix="rocm_nb-shared-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield Cache(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def planted_by_nobody(cache: Cache) -> Path:
    """nobody writes a "newer" install (built in 2099) whose program leaves the mark; returns its folder."""
    folder = cache.servers / "cpu-native-planted"
    as_nobody(lambda: cache.install(folder.name, "9.9.9 (planted)", built_at="2099-01-01T00:00:00+00:00",
                                    marks=True))
    assert folder.stat().st_uid == NOBODY.pw_uid
    return folder


# -- another user's install is never run ---------------------------------------------------------


@pytest.mark.unit
@as_root
def test_an_install_planted_in_a_group_writable_cache_is_never_run(cache: Cache) -> None:
    """The issue's repro: servers/ that another uid can write (here through its group) and a planted newer install."""
    mine = cache.install("cpu-native-mine", "1.0 (mine)")
    os.chown(cache.servers, 0, NOGROUP)
    cache.servers.chmod(0o775)
    planted = planted_by_nobody(cache)

    found, said = cache.find()
    assert not cache.mark.exists(), "the planted program was run"
    assert found.startswith("No usable llama-server was found")
    reason = f"{cache.servers} is writable by the group nogroup, which has other members"
    assert reason in found  # BinaryNotFound lists what was tried: neither install may be trusted
    assert sorted(said) == [
        f"{mine} was not used: {reason}, so another user could have put or changed the programs in it. If you trust "
        f"what is there: chmod go-w {cache.servers}; or build your own in a cache of yours: "
        "ROCM_NB_CACHE=~/.cache/rocm_nb-own rocm-nb server install",
        f"{planted} was not used: {planted / 'manifest.json'} belongs to uid 65534 (nobody), not to you or root, so "
        f"another user could have put or changed the programs in it. If you trust what is there: sudo chown root: "
        f"{planted / 'manifest.json'}; or build your own in a cache of yours: ROCM_NB_CACHE=~/.cache/rocm_nb-own "
        "rocm-nb server install"]


@pytest.mark.unit
@as_root
def test_an_install_owned_by_another_user_is_skipped_for_yours(cache: Cache) -> None:
    """servers/ is safe, but an install folder in it belongs to nobody: the older install of yours is run."""
    mine = cache.install("cpu-native-mine", "1.0 (mine)")
    (cache.servers / "cpu-native-planted").mkdir()
    os.chown(cache.servers / "cpu-native-planted", NOBODY.pw_uid, NOBODY.pw_gid)  # left by another user
    planted = planted_by_nobody(cache)

    found, said = cache.find()
    assert found == str(mine / "llama-server")
    assert not cache.mark.exists(), "the planted program was run"
    [warning] = said
    assert warning.startswith(f"{planted} was not used: {planted / 'manifest.json'} belongs to uid 65534 (nobody), "
                              "not to you or root, so another user could have put or changed the programs in it")
    assert "ROCM_NB_CACHE=" in warning


@pytest.mark.unit
@as_root
@pytest.mark.parametrize("loosened", ["program owned by nobody", "manifest writable by all", "install writable by all",
                                      "cache root writable by all"])
def test_any_path_others_can_change_makes_the_install_untrusted(cache: Cache, loosened: str) -> None:
    mine = cache.install("cpu-native-mine", "1.0 (mine)")
    path = {"program owned by nobody": mine / "llama-server", "manifest writable by all": mine / "manifest.json",
            "install writable by all": mine, "cache root writable by all": cache.root}[loosened]
    if "nobody" in loosened:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    else:
        path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o002)
    found, said = cache.find()
    expected = (f"{path} belongs to uid 65534 (nobody)" if "nobody" in loosened
                else f"{path} is writable by every user")
    assert expected in found and len(said) == 1 and expected in said[0]


@pytest.mark.unit
@as_root
def test_a_cache_root_populated_serves_every_user_without_a_warning(cache: Cache) -> None:
    """The README's shared cache, as an administrator provides it: root's and read-only, used by nobody too."""
    mine = cache.install("cpu-native-admin", "1.0 (admin)")
    found, said = as_nobody(cache.find)
    assert (found, said) == (str(mine / "llama-server"), [])


@pytest.mark.unit
@as_root
def test_a_group_writable_folder_is_fine_when_the_group_is_its_owners_alone(cache: Cache) -> None:
    """Under a umask of 002 (user private groups) a cache is group-writable by a group with one member."""
    mine = cache.install("cpu-native-mine", "1.0 (mine)")
    for folder in (cache.root, cache.servers, mine):
        os.chown(folder, 0, 0)
        folder.chmod(0o775)
    assert cache.find() == (str(mine / "llama-server"), [])


@pytest.mark.unit
@as_root
def test_nothing_is_built_into_a_cache_others_can_write(cache: Cache, tmp_path: Path) -> None:
    os.chown(cache.servers, 0, NOGROUP)
    cache.servers.chmod(0o775)
    with pytest.raises(BuildError, match=rf"Not building llama-server into {cache.servers}: {cache.servers} is "
                                         "writable by the group nogroup, which has other members"):
        install_server("cpu", environ={**os.environ, "ROCM_NB_CACHE": str(cache.root)},
                       source_dir=tiny_llama_cpp(tmp_path / "src"),
                       cpu=frozenset(), smoke=runs_without_crashing, progress=False, machine="x86_64")
    assert list(cache.servers.iterdir()) == []


# -- the llama.cpp sources are the pinned ones -----------------------------------------------------


def tampered_sdist(directory: Path, work: Path) -> Path:
    """A llama_cpp_python-<pinned>.tar.gz whose vendor/llama.cpp is a tiny project that builds and runs."""
    source = tiny_llama_cpp(work / "tiny")
    sdist = directory / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "w:gz") as tar:
        for file in source.iterdir():
            tar.add(file, f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/{file.name}")
        info = tarfile.TarInfo(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/PKG-INFO")
        text = f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {LLAMA_CPP_PYTHON_VERSION}\n".encode()
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return sdist


@pytest.mark.unit
def test_a_tampered_sdist_already_in_the_cache_is_not_built(tmp_path: Path) -> None:
    servers = tmp_path / "cache" / "servers"
    sdist = tampered_sdist(servers / "sdist", tmp_path)
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent)}
    with pytest.raises(BuildError) as raised:
        install_server("cpu", environ=environ, cpu=frozenset({"sse4_2"}), portable=True, smoke=runs_without_crashing,
                       progress=False, machine="x86_64")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert str(raised.value).startswith(f"{sdist} has SHA-256 {digest}, not the {LLAMA_CPP_PYTHON_SHA256} that PyPI "
                                        f"publishes for llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}")
    assert f"rm {sdist}" in str(raised.value) and "Nothing was built" in str(raised.value)
    assert sorted(p.name for p in servers.iterdir()) == ["build-cpu.log", "sdist"]  # no install


@pytest.mark.unit
def test_pip_refuses_a_download_that_is_not_the_pinned_sdist(tmp_path: Path) -> None:
    """pip itself, given a find-links folder that offers a tampered file under the pinned name."""
    offered = tampered_sdist(tmp_path / "offered", tmp_path)
    servers = tmp_path / "cache" / "servers"
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent), "PIP_CONFIG_FILE": os.devnull,
               "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(offered.parent)}
    with pytest.raises(BuildError, match="failed while downloading the llama-cpp-python sdist with pip") as raised:
        install_server("cpu", environ=environ, cpu=frozenset({"sse4_2"}), portable=True, smoke=runs_without_crashing,
                       progress=False, machine="x86_64")
    assert "DO NOT MATCH THE HASHES" in raised.value.log_tail
    assert LLAMA_CPP_PYTHON_SHA256 in raised.value.log_tail
    assert not (servers / "sdist").exists() or not any((servers / "sdist").iterdir())


@pytest.mark.server
def test_the_cached_sdist_is_the_pinned_one(tmp_path: Path) -> None:
    """What make setup downloaded is what the pin says, and what a build extracts is a private copy of it."""
    copy = _verified_copy(SDIST, tmp_path, [])
    assert copy.parent == tmp_path and copy.read_bytes() == SDIST.read_bytes()


# -- doctor checks the catalogue models ------------------------------------------------------------


@pytest.mark.server
def test_doctor_verifies_the_catalogue_models_and_names_a_changed_one(
        tmp_path: Path, model_path: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    copy = models / CATALOGUE[DEFAULT_MODEL].filename
    shutil.copyfile(model_path, copy)
    environ = {"ROCM_NB_CACHE": str(tmp_path)}
    assert verify(DEFAULT_MODEL, environ=environ) == f"{copy}: SHA-256 {CATALOGUE[DEFAULT_MODEL].sha256[:8]}... " \
                                                     "as pinned"
    with copy.open("r+b") as handle:  # one byte of the weights, far past the header: read_info cannot tell
        handle.seek(-1000, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-1000, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(InvalidModel, match=rf"{copy} has SHA-256 [0-9a-f]{{64}}, not the "
                                           rf"{CATALOGUE[DEFAULT_MODEL].sha256} pinned for {DEFAULT_MODEL}"):
        verify(DEFAULT_MODEL, environ=environ)

    monkeypatch.setenv("ROCM_NB_CACHE", str(tmp_path))
    monkeypatch.setenv("ROCM_NB_LLAMA_SERVER", str(find_server(environ={}).path))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"  {DEFAULT_MODEL}: CHANGED: {copy} has SHA-256" in out and f"rm {copy} && rocm-nb pull" in out
    assert "  minilm: not downloaded" in out
