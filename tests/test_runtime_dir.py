"""Run records in a private per-user runtime folder; an unusable one leaks no server (issue 11, item 7).

A read-only cache, provisioned by an administrator, must work: nothing a
start writes goes into the cache. A runtime folder that cannot be used is a
``RuntimeDirError`` before any process exists; a record that cannot be
written after the spawn (a full disk) kills the child first. Root ignores
file modes, so what really fails for root is used: ``run`` a regular file,
the immutable attribute where ``chattr`` works, a folder under a file, and a
file-size limit of 0 in a child interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rocm_nb import LocalModel
from rocm_nb._paths import private_folder, runtime_root
from rocm_nb._process import launch
from rocm_nb.binary import find_server
from rocm_nb.errors import RuntimeDirError
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model
from rocm_nb.server._registry import ServerRegistry
from tests.support.decoding import still_serves
from tests.support.processes import gone

as_root = pytest.mark.usefixtures("needs_root")  # fails, never skips, without root


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def llama_server_children() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.name() == "llama-server" and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


# -- where the records live -------------------------------------------------------------------


@pytest.mark.unit
def test_the_runtime_folder_is_per_user_and_never_in_the_cache(tmp_path: Path) -> None:
    assert runtime_root({"ROCM_NB_RUNTIME_DIR": str(tmp_path / "rt"), "ROCM_NB_CACHE": "/c"}) == tmp_path / "rt"
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    assert runtime_root({"XDG_RUNTIME_DIR": str(xdg), "ROCM_NB_CACHE": "/c"}) == xdg / "rocm_nb"
    (tmp_path / "link").symlink_to(xdg)  # a link is not trusted as the user's runtime folder
    fallback = runtime_root({"XDG_RUNTIME_DIR": str(tmp_path / "link")})
    assert fallback.name == f"rocm_nb-{os.getuid()}" or fallback == Path(f"/run/user/{os.getuid()}/rocm_nb")


@pytest.mark.unit
def test_a_looser_folder_of_ours_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "rt"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    assert private_folder(loose).stat().st_mode & 0o777 == 0o700


@pytest.mark.unit
@as_root
def test_a_folder_another_user_created_first_is_refused(tmp_path: Path) -> None:
    """In a shared temporary directory another user can take the name first: never use their folder."""
    nobody = pwd.getpwnam("nobody")
    theirs = tmp_path / "rt"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    before = children()
    with pytest.raises(RuntimeDirError, match=f"belongs to uid {nobody.pw_uid}.*ROCM_NB_RUNTIME_DIR"):
        launch(["sleep", "60"], os.environ, {"ROCM_NB_RUNTIME_DIR": str(theirs)}, 10)
    assert children() <= before and list(theirs.iterdir()) == []


@pytest.mark.unit
def test_a_link_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "rt").symlink_to(target)
    with pytest.raises(RuntimeDirError, match="it is not a folder"):
        private_folder(tmp_path / "rt")


# -- nothing left behind ----------------------------------------------------------------------


@pytest.mark.unit
def test_an_unusable_runtime_folder_fails_before_anything_is_spawned(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    before = children()
    for _ in range(3):  # once per start, and nothing accumulates
        with pytest.raises(RuntimeDirError, match=r"cannot keep run records in .*file/rt: Not a directory; set "
                                                  r"ROCM_NB_RUNTIME_DIR"):
            launch(["sleep", "60"], os.environ, {"ROCM_NB_RUNTIME_DIR": str(tmp_path / "file" / "rt")}, 10)
    assert children() <= before


@pytest.mark.unit
def test_a_record_that_cannot_be_written_kills_the_child_first(tmp_path: Path) -> None:
    """A full disk, for real: a file-size limit of 0 makes the record's write fail with EFBIG after the spawn."""
    script = textwrap.dedent(f"""
        import json, os, resource, signal, psutil
        from rocm_nb._process import launch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        out = {{}}
        try:
            launch(["sleep", "60"], os.environ, {{"ROCM_NB_RUNTIME_DIR": {str(tmp_path / "rt")!r}}}, 10)
        except Exception as exc:
            out["error"] = f"{{type(exc).__name__}}: {{exc}}"
        out["children"] = [p.pid for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]
        print(json.dumps(out), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["error"].startswith("RuntimeDirError: cannot write a run record in "), out
    assert "(the process was stopped)" in out["error"]
    assert out["children"] == []
    assert [p.name for p in (tmp_path / "rt").iterdir()] == []  # no half record either


# -- a read-only, pre-provisioned cache -------------------------------------------------------


@pytest.fixture
def read_only_cache() -> Iterator[Path]:
    """A cache an administrator provisioned: the installed llama-server and the default model, linked in;
    ``run`` a regular file (which fails even for root), the folders 0555 and immutable where chattr works."""
    binary, model = find_server(None), resolve_model(DEFAULT_MODEL)
    base = Path(tempfile.mkdtemp(prefix="rocm_nb-ro-cache-"))
    cache = base / "cache"
    (cache / "servers").mkdir(parents=True)
    (cache / "models").mkdir()
    (cache / "servers" / binary.path.parent.name).symlink_to(binary.path.parent)
    for file in model.parent.glob(model.name + "*"):  # the model and its checksum
        (cache / "models" / file.name).symlink_to(file)
    (cache / "run").write_text("an older layout, or a mistake")
    folders = [cache / "servers", cache / "models", cache]
    for folder in folders:
        folder.chmod(0o555)
    immutable = all(subprocess.run(["chattr", "+i", str(f)], capture_output=True).returncode == 0
                    for f in folders) if shutil.which("chattr") else False
    try:
        yield cache
    finally:
        for folder in folders:
            if immutable:
                subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
            folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.server
def test_a_read_only_cache_works_with_records_kept_elsewhere(read_only_cache: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROCM_NB_CACHE", str(read_only_cache))
    monkeypatch.setenv("ROCM_NB_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.delenv("ROCM_NB_LLAMA_SERVER", raising=False)
    listing = sorted(str(p) for p in read_only_cache.rglob("*"))
    with LocalModel(DEFAULT_MODEL, ctx_size=1472, registry=ServerRegistry()) as model:
        assert str(model.binary.path).startswith(str(read_only_cache))
        still_serves(model)
        assert [p.name for p in (tmp_path / "rt").iterdir()] == [f"{model.pid}.json"]
        pid = model.pid
    assert gone(pid)()
    assert sorted(str(p) for p in read_only_cache.rglob("*")) == listing  # nothing written into the cache


@pytest.mark.server
def test_an_unusable_runtime_folder_stops_a_model_start_before_any_server_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ROCM_NB_RUNTIME_DIR", str(tmp_path / "file" / "rt"))
    before = {p.pid for p in llama_server_children()}
    model = LocalModel(DEFAULT_MODEL, ctx_size=1536, registry=ServerRegistry())
    for _ in range(2):  # each start fails the same way; none leaves a server behind
        with pytest.raises(RuntimeDirError, match="ROCM_NB_RUNTIME_DIR"):
            model.start()
        assert {p.pid for p in llama_server_children()} <= before
    model.close()
