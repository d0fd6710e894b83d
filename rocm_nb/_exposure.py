"""What a server may listen on and be passed: the policy that keeps it private.

A llama-server listens on 127.0.0.1 on a free port and requires a random
API key; nothing a user passes through (``extra_args``, ``env``) may change
the host, the port or the key, so that a server is exposed only by an
explicit ``host=`` (which warns). This module says what is refused and
why (:func:`check_extra_args`, :func:`check_env`), whether an address
stays on this machine (:func:`is_loopback`), where to reach a server
(:func:`connect_host`) and which port is free (:func:`free_port`).

Example:
    >>> check_extra_args(["--top-k", "5"]), is_loopback("::1")
    (('--top-k', '5'), True)
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

__all__ = ["GUARDED_ENV", "check_env", "check_extra_args", "connect_host", "free_port", "is_loopback"]

_GUARDED_FLAGS = ("--host", "--port", "--api-key", "--api-key-file")
"""llama-server flags that would undo the safety defaults (it has no short aliases for them)."""
GUARDED_ENV = ("LLAMA_API_KEY", "LLAMA_ARG_API_KEY_FILE", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT")
"""The environment variables llama-server reads for the same settings (never inherited by a server)."""


def check_extra_args(extra_args: Sequence[str]) -> tuple[str, ...]:
    """``extra_args`` as a tuple, if it does not set what rocm_nb keeps safe; else a :class:`ValueError`.

    Example:
        >>> check_extra_args(["--top-k", "5"])
        ('--top-k', '5')
        >>> check_extra_args(["--api-key=x"])
        Traceback (most recent call last):
        ...
        ValueError: extra_args may not contain --api-key: rocm_nb sets a random key itself (read it from model.api_key)
    """
    advice = {
        "--host": "the server listens on 127.0.0.1; pass host= to listen on another interface",
        "--port": "rocm_nb picks a free port itself (read it from model.base_url)",
        "--api-key": "rocm_nb sets a random key itself (read it from model.api_key)",
    }
    for arg in extra_args:
        flag = str(arg).split("=", 1)[0]
        if flag in _GUARDED_FLAGS:
            raise ValueError(f"extra_args may not contain {flag}: {advice[flag.removesuffix('-file')]}")
    return tuple(extra_args)


def check_env(names: Iterable[str]) -> None:
    """A :class:`ValueError` if a server's extra environment would set its host, port or key.

    Example:
        >>> check_env(["HIP_VISIBLE_DEVICES"])
        >>> check_env(["LLAMA_ARG_PORT"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: env may not set LLAMA_ARG_PORT: rocm_nb sets the host, port and API key itself ...
    """
    for name in names:
        if name in GUARDED_ENV:
            raise ValueError(f"env may not set {name}: rocm_nb sets the host, port and API key itself "
                             "(pass host= to listen on another interface)")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for anything else, names included.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("gpu-box")
        (True, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """Where to reach a server bound to ``host``: loopback for a wildcard address.

    Example:
        >>> connect_host("0.0.0.0"), connect_host("::"), connect_host("10.0.0.2")
        ('127.0.0.1', '::1', '10.0.0.2')
    """
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it).

    Another process may take it before the server binds;
    :class:`~rocm_nb.server.LlamaServer` retries on a new port when that happens.

    Example:
        >>> 1024 <= free_port() <= 65535
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
