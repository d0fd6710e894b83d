"""Raw sockets for servers written in a test: read one HTTP request as a client sends it."""

from __future__ import annotations

import socket


def read_request(conn: socket.socket) -> bytes:
    """One whole request, its body included (b"" when the client hung up first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return data
