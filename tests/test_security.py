"""Security on a shared machine (issue 11, items 1-3), checked as another local user.

The tests run as root (as CI does) and switch a second process to ``nobody``
to assert what another user can and cannot see or do: read the API key,
read or plant run records, or make cleanup kill a process it should not.
The run folders live in a world-traversable temporary folder (``ROCM_NB_RUNTIME_DIR``),
so the only protection under test is the mode rocm_nb sets, not ``/root``'s.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rocm_nb import LocalModel
from rocm_nb._process import launch, read_records, reap_stale_servers
from rocm_nb.server import LlamaServer, ServerConfig
from tests.support.decoding import still_serves
from tests.support.processes import gone, wait_until

NOBODY = pwd.getpwnam("nobody")
PYTHON = next(p for p in ("/usr/bin/python3", os.path.realpath(sys.executable)) if os.access(p, os.X_OK))
"""An interpreter nobody can run (the venv's, and pyenv's under /root, may be out of its reach)."""
as_root = pytest.mark.usefixtures("needs_root")  # fails, never skips, without root


def as_nobody(code: str) -> dict[str, Any]:
    """Run ``code`` (which sets a dict ``out``) as uid nobody; return ``out``."""
    script = "import json, os\nout = {}\n" + textwrap.dedent(code) + "\nprint(json.dumps(out))"
    done = subprocess.run([PYTHON, "-I", "-c", script], user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def cache() -> Iterator[Path]:
    """A cache folder every user can reach (its parents are 0755), like a home folder on most systems."""
    base = Path(tempfile.mkdtemp(prefix="rocm_nb-security-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base / "cache"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of this user, leading its own group, as a server would."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_record(run: Path, pid: int, name: str = "", **fields: object) -> Path:
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = run / f"{name or pid}.json"
    path.write_text(json.dumps({
        "owner_pid": dead_pid(), "owner_created": 1.0,
        "server_pid": pid, "server_created": psutil.Process(pid).create_time(), **fields,
    }))
    return path


def describing(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    """The fields of a record that describes ``proc`` exactly."""
    process = psutil.Process(proc.pid)
    return {"exe": process.exe(), "argv": process.cmdline()}


# -- 1. the API key is not on the command line ------------------------------------------------


@pytest.mark.server
@as_root
def test_another_user_cannot_read_the_key_that_still_works_for_its_owner(model: LocalModel) -> None:
    model.start()
    seen = as_nobody(f"""
        out["cmdline"] = open("/proc/{model.pid}/cmdline", "rb").read().decode(errors="replace")
        try:
            open("/proc/{model.pid}/environ", "rb").read()
            out["environ"] = "read"
        except PermissionError:
            out["environ"] = "denied"
    """)
    assert "--port" in seen["cmdline"]  # it did read the command line
    assert model.api_key not in seen["cmdline"] and "--api-key" not in seen["cmdline"]
    assert seen["environ"] == "denied"
    body = {"prompt": "Hi", "n_predict": 1}
    assert httpx.post(f"{model.base_url}/completion", json=body, timeout=30).status_code == 401
    wrong = httpx.post(f"{model.base_url}/completion", json=body, headers={"Authorization": "Bearer nope"},
                       timeout=30)
    assert wrong.status_code == 401
    right = httpx.post(f"{model.base_url}/completion", json=body,
                       headers={"Authorization": f"Bearer {model.api_key}"}, timeout=30)
    assert right.status_code == 200


@pytest.mark.unit
@as_root
def test_another_user_can_neither_read_nor_plant_run_records(cache: Path) -> None:
    run = cache / "run"
    run.mkdir(parents=True, mode=0o777)
    run.chmod(0o777)  # an existing, too open folder is tightened
    child = launch(["sleep", "60"], os.environ, {"ROCM_NB_RUNTIME_DIR": str(cache / "run")}, 10, model="m.gguf")
    try:
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        assert stat.S_IMODE(child.record.stat().st_mode) == 0o600
        seen = as_nobody(f"""
            for name, action in (("list", lambda: os.listdir({str(run)!r})),
                                 ("read", lambda: open({str(child.record)!r}).read()),
                                 ("plant", lambda: open({str(run / "1.json")!r}, "w").write("{{}}"))):
                try:
                    action()
                    out[name] = "allowed"
                except PermissionError:
                    out[name] = "denied"
        """)
        assert seen == {"list": "denied", "read": "denied", "plant": "denied"}
    finally:
        child.stop()


@pytest.mark.unit
def test_a_fresh_run_folder_is_private(cache: Path) -> None:
    child = launch(["true"], os.environ, {"ROCM_NB_RUNTIME_DIR": str(cache / "run")}, 10)
    child.proc.wait(10)
    assert stat.S_IMODE((cache / "run").stat().st_mode) == 0o700
    assert stat.S_IMODE(child.record.stat().st_mode) == 0o600
    child.stop()


# -- 2. cleanup kills only what a record describes --------------------------------------------


@pytest.mark.unit
def test_a_record_naming_an_unrelated_process_does_not_get_it_killed(cache: Path, bystander: Any) -> None:
    """pid and start time are public: a record with them but another executable and command line is ignored."""
    run = cache / "run"
    write_record(run, bystander.pid, exe="/opt/llama/llama-server",
                 argv=["/opt/llama/llama-server", "-m", "m.gguf", "--port", "8080"], model="m.gguf", port=8080)
    same_exe = write_record(run, bystander.pid, "other", **{**describing(bystander), "argv": ["sleep", "61"]})
    assert reap_stale_servers({"ROCM_NB_RUNTIME_DIR": str(cache / "run")}) == []
    assert bystander.poll() is None
    assert not same_exe.exists()  # a record whose process is not the one described is stale: removed


@pytest.mark.unit
@as_root
def test_records_owned_by_another_user_or_naming_their_process_are_ignored(cache: Path, bystander: Any) -> None:
    run = cache / "run"
    foreign = write_record(run, bystander.pid, **describing(bystander))  # would be reaped, were it ours
    os.chown(foreign, NOBODY.pw_uid, NOBODY.pw_gid)
    theirs = subprocess.Popen(["sleep", "60"], user=NOBODY.pw_uid, start_new_session=True)
    try:
        wait_until(lambda: psutil.Process(theirs.pid).cmdline() == ["sleep", "60"])
        write_record(run, theirs.pid, **describing(theirs))
        assert reap_stale_servers({"ROCM_NB_RUNTIME_DIR": str(cache / "run")}) == []
        assert bystander.poll() is None and theirs.poll() is None
        assert foreign.exists()
    finally:
        theirs.kill()
        theirs.wait()


@pytest.mark.unit
def test_malformed_records_are_ignored_and_said_at_debug_level(cache: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    run = cache / "run"
    run.mkdir(parents=True)
    (run / "1.json").mkdir()
    (run / "2.json").write_text("")
    (run / "3.json").write_text("{not json")
    (run / "4.json").write_text(json.dumps({"server_pid": 4}))
    (run / "5.json").write_text(json.dumps([1, 2]))
    (run / "6.json").symlink_to("/etc/hostname")
    environ = {"ROCM_NB_RUNTIME_DIR": str(cache / "run")}
    with caplog.at_level(logging.DEBUG, logger="rocm_nb"):
        assert list(read_records(environ)) == []
        assert reap_stale_servers(environ) == []
    assert sorted(p.name for p in run.iterdir()) == [f"{i}.json" for i in range(1, 7)]  # left alone
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "ignored" in r.getMessage()]
    for i in range(1, 7):
        assert any(f"{i}.json" in line for line in said), (i, said)


@pytest.mark.unit
def test_cleanup_of_an_unreadable_run_folder_never_raises(cache: Path) -> None:
    cache.mkdir()
    (cache / "run").write_text("not a folder")
    assert reap_stale_servers({"ROCM_NB_RUNTIME_DIR": str(cache / "run")}) == []


@pytest.mark.server
def test_a_real_start_spares_a_crafted_record_and_reaps_a_true_orphan(model: LocalModel, cache: Path,
                                                                      bystander: Any) -> None:
    environ: Mapping[str, str] = {**os.environ, "ROCM_NB_RUNTIME_DIR": str(cache / "run")}
    run = cache / "run"
    orphan = LlamaServer(replace(model.config, ctx_size=1152), environ=environ).start()
    assert orphan.pid is not None and orphan._running is not None
    record = orphan._running.record
    data = json.loads(record.read_text())
    assert orphan.api_key not in record.read_text()
    assert data["exe"] == psutil.Process(orphan.pid).exe() and str(orphan.config.model) in data["argv"]
    record.write_text(json.dumps({**data, "owner_pid": dead_pid(), "owner_created": 1.0}))  # its owner "died"
    write_record(run, bystander.pid, exe=data["exe"], argv=data["argv"], model=data["model"], port=data["port"])
    (run / "9.json").mkdir()
    try:
        with LlamaServer(replace(model.config, ctx_size=1216), environ=environ):
            wait_until(gone(orphan.pid), timeout=5)
            assert bystander.poll() is None
            assert (run / "9.json").is_dir()
    finally:
        orphan.close()


# -- 3. extra_args cannot undo the defaults ---------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("extra", [("--host", "0.0.0.0"), ("--port", "1"), ("--api-key", "x"), ("--api-key=x",),
                                   ("--api-key-file", "/tmp/k"), ("--host=::",)])
def test_extra_args_that_undo_the_defaults_are_refused_before_anything_starts(extra: tuple[str, ...]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    flag = extra[0].split("=")[0]
    with pytest.raises(ValueError, match=f"extra_args may not contain {flag}: "):
        LocalModel("/nonexistent/model.gguf", extra_args=extra)  # refused before the model is even looked up
    with pytest.raises(ValueError, match=f"extra_args may not contain {flag}: "):
        ServerConfig(Path("llama-server"), Path("m.gguf"), 512, extra_args=("--top-k", "5", *extra))
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.unit
@pytest.mark.parametrize("name", ["LLAMA_API_KEY", "LLAMA_ARG_API_KEY_FILE", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT"])
def test_env_cannot_set_them_either(name: str) -> None:
    with pytest.raises(ValueError, match=f"env may not set {name}"):
        ServerConfig(Path("llama-server"), Path("m.gguf"), 512, env=((name, "x"),))


@pytest.mark.server
def test_exposing_a_server_is_explicit_and_warns(model_path: str) -> None:
    with pytest.warns(UserWarning, match="every machine that can reach this one can use it"):
        exposed = LocalModel(model_path, host="0.0.0.0", ctx_size=1088)
    assert exposed.config.host == "0.0.0.0" and "--host" in exposed.config.argv(1)
    with exposed:
        listening = {c.laddr.ip for c in psutil.Process(exposed.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"0.0.0.0"}, listening
        still_serves(exposed)
