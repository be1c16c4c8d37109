"""The messages between the host stand-in and its workers (function_rpc.proto, compiled here with
grpcio-tools' protoc on first use, into build/), and how they travel: each a StreamingMessage,
serialized and prefixed with its length, on one loopback socket per worker, both ways at once."""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support import ROOT

PROTO = Path(__file__).with_name("function_rpc.proto")
LENGTH = struct.Struct(">I")


def _compiled() -> ModuleType:
    """function_rpc_pb2, compiled from the .proto as it is now (a changed file is compiled anew)."""
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    out = ROOT / "build" / "rpc" / digest
    module_path = out / "function_rpc_pb2.py"
    if not module_path.exists():
        from grpc_tools import protoc

        out.mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
        status = protoc.main(
            ["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={out}", str(PROTO)]
        )
        if status != 0:
            raise RuntimeError(f"protoc could not compile {PROTO}")
    spec = importlib.util.spec_from_file_location("function_rpc_pb2", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_rpc_pb2"] = module
    spec.loader.exec_module(module)
    return module


protos: Any = _compiled()


def send(connection: socket.socket, message: Any) -> None:
    data = message.SerializeToString()
    connection.sendall(LENGTH.pack(len(data)) + data)


def receive(connection: socket.socket) -> Any | None:
    """The next StreamingMessage, or None once the other side has closed the stream."""
    head = _exactly(connection, LENGTH.size)
    if head is None:
        return None
    body = _exactly(connection, LENGTH.unpack(head)[0])
    if body is None:
        return None
    message = protos.StreamingMessage()
    message.ParseFromString(body)
    return message


def _exactly(connection: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
