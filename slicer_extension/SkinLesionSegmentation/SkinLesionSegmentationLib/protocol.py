"""The messages between the module and its worker process, over a TCP connection to 127.0.0.1.

A message is a 4-byte big-endian header length, a UTF-8 JSON header, then the raw C-ordered bytes of the arrays
the header lists (``"arrays": [{"name", "dtype", "shape"}]``). Requests carry ``"token"``, ``"command"`` and
``"params"``; replies carry ``"ok"`` and either ``"result"`` or a one-line ``"error"``. The worker reads and checks
the header (bounded in size) before it reads any array bytes, so a client without the session's token cannot make
it allocate anything.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import struct

import numpy as np

HOST = "127.0.0.1"
READY_PREFIX = "SKIN-LESION-WORKER-READY "
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = {"uint8", "float32", "int64"}
_LENGTH = struct.Struct(">I")


class ProtocolError(ConnectionError):
    """A malformed or truncated message, or a connection that closed mid-message."""


def new_token() -> str:
    """A per-session secret shared only with the worker (through its standard input)."""
    return secrets.token_hex(32)


def photo_key(photo: np.ndarray) -> str:
    """A name for a photo's pixels (a hash of its shape, type and bytes): the same pixels, the same name."""
    photo = np.ascontiguousarray(photo)
    digest = hashlib.blake2b(f"{photo.dtype.name}{photo.shape}".encode(), digest_size=16)
    digest.update(memoryview(photo).cast("B"))
    return digest.hexdigest()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def send_message(sock: socket.socket, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = {name: np.ascontiguousarray(value) for name, value in (arrays or {}).items()}
    header = dict(
        header, arrays=[{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()]
    )
    encoded = json.dumps(header).encode("utf-8")
    sock.sendall(_LENGTH.pack(len(encoded)) + encoded)
    for value in arrays.values():
        sock.sendall(memoryview(value).cast("B"))


def receive_header(sock: socket.socket) -> dict:
    """Read one message's header; the arrays that follow are read by :func:`receive_arrays`."""
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    body = _recv_exact(sock, length)
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"message header is not JSON ({err})") from None
    except RecursionError:  # e.g. 100000 nested brackets: refused like any other malformed header
        raise ProtocolError("message header is nested too deeply") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise ProtocolError("message header is not a JSON object with an 'arrays' list")
    return header


def receive_arrays(sock: socket.socket, header: dict) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in header.get("arrays", []):
        dtype, shape = str(spec.get("dtype")), [int(n) for n in spec.get("shape", [])]
        if dtype not in ALLOWED_DTYPES or any(n < 0 for n in shape):
            raise ProtocolError(f"array {spec.get('name')!r} has an unsupported dtype or shape ({dtype}, {shape})")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        arrays[str(spec["name"])] = np.frombuffer(_recv_exact(sock, size), dtype=dtype).reshape(shape)
    return arrays


def receive_message(sock: socket.socket) -> tuple[dict, dict[str, np.ndarray]]:
    header = receive_header(sock)
    return header, receive_arrays(sock, header)
