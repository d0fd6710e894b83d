"""RPC workers say who can use them, and never listen beyond this machine by accident (issue 21, item 4).

ggml-rpc has no authentication, so a worker on 127.0.0.1 serves every local
user: the first test proves it as ``nobody`` (HELLO, then the version the
worker answers with) and checks that starting the worker warned, because
``nobody`` had a process running. The worker is the real ``ggml-rpc-server``
of the cache's build.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - socket host names need this codec, which nobody cannot load from /root
import socket
import struct
import subprocess
import warnings
from pathlib import Path

import psutil
import pytest

from rocm_nb import rpc_worker
from rocm_nb.server.rpc import RpcWorker, _other_users
from tests.support.uids import NOBODY, as_nobody

as_root = pytest.mark.usefixtures("needs_root")  # fails, never skips, without root
HELLO = 14
"""``RPC_CMD_HELLO`` in the pinned ggml-rpc.cpp (a static_assert there keeps it 14)."""


def hello(port: int) -> tuple[int, int, int]:
    """Say HELLO to the worker as ggml's own client does; return the protocol version it answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes([HELLO]) + struct.pack("<Q", 24) + bytes(24))  # rpc_msg_hello_req: 24 bytes of caps
        answer = b""
        while len(answer) < 8 + 28:
            chunk = sock.recv(64)
            assert chunk, f"the worker hung up after {answer!r}"
            answer += chunk
    size = struct.unpack_from("<Q", answer)[0]
    assert size == 28  # rpc_msg_hello_rsp: major, minor, patch, padding, 24 bytes of caps
    return answer[8], answer[9], answer[10]


@pytest.mark.server
@as_root
def test_a_worker_warns_when_another_user_is_here_and_that_user_can_use_it() -> None:
    present = subprocess.Popen(["sleep", "120"], user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[])
    try:
        assert any(entry.startswith("nobody (") for entry in _other_users())
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            worker = rpc_worker()
        with worker:
            [warning] = [str(w.message) for w in said if "other users are on this machine" in str(w.message)]
            assert f"the RPC worker on {worker.address} has no authentication, so any of them can connect" in warning
            assert "nobody (" in warning and "docs/security-rpc.md" in warning
            major, _, _ = as_nobody(lambda: hello(worker.port))  # what the warning is about: it answers nobody
            assert major == 7  # RPC_PROTO_MAJOR_VERSION at the pinned llama.cpp
    finally:
        present.kill()
        present.wait()


@pytest.mark.unit
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "gpu-box"])
def test_a_worker_beyond_loopback_is_refused_without_allow_network(host: str) -> None:
    """Refused before anything is looked for or started (this tier has no llama-server at all)."""
    message = rf"an RPC worker on {host} would serve every machine that can reach this one.*allow_network=True"
    with pytest.raises(ValueError, match=message):
        rpc_worker(host=host)
    with pytest.raises(ValueError, match=message):
        RpcWorker(Path("ggml-rpc-server"), host=host, port=50052)


@pytest.mark.server
def test_allow_network_listens_where_asked_and_still_warns() -> None:
    with pytest.warns(UserWarning, match="the RPC worker will listen on 0.0.0.0 without authentication"), \
            rpc_worker(host="0.0.0.0", allow_network=True) as worker:
        listening = [c.laddr for c in psutil.Process(worker.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert [(address.ip, address.port) for address in listening] == [("0.0.0.0", worker.port)]
