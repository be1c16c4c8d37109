"""`vault serve` as an operator runs it, a real subprocess on loopback: it holds no more than it
should (open files, request bodies), answers on a connection after a failure, logs a vanished
client in one line, restarts after a crash without losing or doubling what producers sent, and
takes its settings from the environment without printing secrets; and what it answers that the
Function App does not (405s naming the methods a route takes, 503 while another writer holds the
stream, 202 after --wait, the API key). The contract both hosts keep is test_http.py's."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

import vault_core
from tests.support import ROOT
from tests.support.azurite import KEY, busy_port, free_port
from tests.support.posting import json_body, post
from tests.support.served import Served, served_on
from vault_core import Message, transfer
from vault_core import format as fmt
from vault_core import http_models as http
from vault_core.client import Unauthorized, VaultClient


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_polling_stream_info_opens_no_file_it_does_not_close(tmp_path):
    server = Served(str(tmp_path / "vault"), "vault")
    try:
        with VaultClient(server.url) as client:
            for name in ("a", "b", "c"):
                client.publish(name, [Message("k", b"v")])
        with httpx.Client(base_url=server.url) as polling:
            for _ in range(50):  # warm up: imports, pools
                polling.get("/api/streams/a")
            before = open_files(server.process.pid)
            for n in range(3000):
                assert polling.get("/api/streams/a").status_code == 200
                if n % 10 == 0:
                    assert polling.get("/api/streams").status_code == 200
            assert open_files(server.process.pid) <= before + 2
    finally:
        server.stop()


def test_after_a_500_the_same_connection_still_gets_answers(tmp_path):
    root = tmp_path / "vault"
    with vault_core.open_store(root).writer("damaged") as writer:
        writer.append([Message("k", b"v")])
    with open(root / "damaged" / "log", "r+b") as log:  # both commit slots: the stream is unreadable
        for slot in fmt.COMMIT_SLOTS:
            log.seek(slot + 30)
            log.write(b"\xff\xff")
    server = Served(str(root), "vault")
    try:
        with httpx.Client(base_url=server.url) as connection:
            failed = connection.post(
                "/api/streams/damaged",
                content=http.encode_json([Message("k", b"v")]),
                headers={"content-type": http.JSON},
            )
            assert failed.status_code == 500 and failed.json()["status"] == 500
            assert "both commit slots" in failed.json()["detail"]
            # The keep-alive connection is either still open or was closed saying so.
            assert connection.get("/api/health").status_code == 200
            again = connection.post(
                "/api/streams/sound",
                content=http.encode_json([Message("k", b"v")]),
                headers={"content-type": http.JSON},
            )
            assert again.status_code == 200
    finally:
        server.stop()


def test_a_client_that_goes_away_mid_body_is_one_line_in_the_log(tmp_path):
    log = tmp_path / "serve.log"
    server = Served(str(tmp_path / "vault"), "vault", log=log)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(
                b"POST /api/streams/s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"x" * 1000
            )
            time.sleep(0.3)
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/api/health").status_code == 200
    finally:
        server.stop()
    said = [line for line in log.read_text().splitlines() if not line.startswith("Message Vault on")]
    lines = [line for line in said if not re.search(r" (\d+|-) [\d.]+ ms$", line)]  # not the request log
    assert len(lines) == 1 and "went away before sending its whole body" in lines[0], lines
    assert any(re.search(r" POST /api/streams/s - [\d.]+ ms$", line) for line in said), said
    assert "s" not in vault_core.open_store(tmp_path / "vault").streams()


def test_bodies_past_the_budget_are_answered_503_before_being_read(tmp_path):
    server = Served(str(tmp_path / "vault"), "vault", "--max-bodies", "16")
    big = transfer.encode_binary([Message(f"k{i}", bytes(1 << 20)) for i in range(14)])  # 14 MiB
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as slow:  # holds 14 MiB of budget
            slow.sendall(
                f"POST /api/streams/s HTTP/1.1\r\nHost: x\r\nContent-Type: {http.BINARY_BATCH}\r\n"
                f"Content-Length: {len(big)}\r\n\r\n".encode()
                + big[:1000]
            )
            time.sleep(0.3)
            refused = httpx.post(
                f"{server.url}/api/streams/s", content=big, headers={"content-type": http.BINARY_BATCH}
            )
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["type"].endswith("/server-busy")
            slow.sendall(big[1000:])
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
        with VaultClient(server.url) as client:  # the budget is free again
            assert client.publish("s", [Message("small", b"")]).position > 0
        assert [m.key for m in vault_core.open_store(tmp_path / "vault").reader("s").replay()][-1] == "small"
    finally:
        server.stop()


def test_a_client_whose_202_the_restarted_server_forgot_gets_its_batch_appended_once(tmp_path):
    """Every POST answered 202; the server is killed and restarted while producers poll: the
    client sends a forgotten batch again under its Idempotency-Key and gets the real result."""
    root, port = str(tmp_path / "vault"), free_port()
    server = Served(root, "vault", "--wait", "0", port=port)
    results: dict[str, vault_core.AppendResult] = {}
    failures: list[BaseException] = []

    def produce(n: int) -> None:
        with VaultClient(f"http://127.0.0.1:{port}", timeout=120, attempts=30) as client:
            for i in range(15):
                key = f"p{n}-{i}"
                try:
                    results[key] = client.publish("s", [Message(key, key.encode())], idempotency_key=key)
                except Exception as error:
                    failures.append(error)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            time.sleep(0.4)
            server.kill()
            server = Served(root, "vault", "--wait", "0", port=port)
        for thread in threads:
            thread.join(180)
    finally:
        server.stop()
    assert not failures, failures
    stored = {m.offset: m.key for m in vault_core.open_store(root).reader("s").replay()}
    assert len(stored) == len(results) == 60
    assert all(stored[result.offsets[0]] == key for key, result in results.items())


def test_a_restarted_server_with_takeover_appends_at_once_on_azure(azurite):
    container = "serve-takeover"
    first = Served(azurite.connection_string, container)
    with VaultClient(first.url) as client:
        client.publish("s", [Message("before", b"")])
    first.kill()  # its 60 s lease stays on the stream
    second = Served(azurite.connection_string, container, "--takeover", "--lease-seconds", "15")
    try:
        started = time.monotonic()
        with VaultClient(second.url, attempts=1) as client:
            client.publish("s", [Message("after", b"")])
        assert time.monotonic() - started < 15
    finally:
        second.stop()
    store = vault_core.open_store(azurite.connection_string, container=container)
    assert [m.key for m in store.reader("s").replay()] == ["before", "after"]


def test_settings_from_the_environment_and_no_secret_in_the_output(azurite, tmp_path):
    log = tmp_path / "serve.log"
    env = {"VAULT_STORE": azurite.connection_string, "VAULT_CONTAINER": "from-env", "VAULT_API_KEY": "k3y"}
    server = Served(None, None, env=env, log=log)
    try:
        body, headers = http.encode_json([Message("k", b"v")]), {"content-type": http.JSON}
        assert httpx.post(f"{server.url}/api/streams/s", content=body, headers=headers).status_code == 401
        assert (
            httpx.post(f"{server.url}/api/streams/s?code=k3y", content=body, headers=headers).status_code
            == 200
        )
    finally:
        server.stop()
    assert vault_core.open_store(azurite.connection_string, container="from-env").streams() == ["s"]
    said = log.read_text()
    assert f"{azurite.blob_endpoint}/from-env" in said
    assert KEY not in said and "AccountKey" not in said and "k3y" not in said


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    with busy_port() as port:
        done = subprocess.run(
            [sys.executable, "-m", "vault_core.cli", "serve", "--store", str(tmp_path), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): another process has it; "
        "pass --port"
    )


# --- what vault serve answers that the Function App does not (it routes methods itself, keeps a
# writer that another may hold, and waits for commits for --wait seconds)

_names = itertools.count()


@pytest.fixture(scope="module", params=["local", "azurite"])
def served(request) -> Iterator[Served]:
    server = served_on(request, request.param, f"serve-{request.param}")
    yield server
    server.stop()


@pytest.fixture
def stream() -> str:
    return f"s-{next(_names)}"


def test_a_method_a_route_does_not_take_is_405_naming_those_it_does(served, stream):
    for method, path, allowed in [
        ("PUT", f"/api/streams/{stream}", {"GET", "HEAD", "POST"}),  # POST is answered before the router
        ("DELETE", "/api/streams", {"GET", "HEAD"}),
        ("POST", f"/api/streams/{stream}/batches/key", {"GET", "HEAD"}),
    ]:
        response = httpx.request(method, f"{served.url}{path}")
        assert response.status_code == 405 and response.json()["status"] == 405
        assert set(response.headers["allow"].split(", ")) == allowed
    assert stream not in served.store().streams()


def test_a_stream_held_by_another_writer_is_503_with_retry_after(served, stream):
    with served.store().writer(stream):
        response = post(served, stream, json_body(("k", b"v")))
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert response.headers["content-type"] == http.PROBLEM_JSON


def test_client_retries_while_the_stream_is_busy(tmp_path):
    server = Served(str(tmp_path), "vault")
    try:
        store = server.store()
        holder = store.writer("busy")
        threading.Timer(1.0, holder.close).start()  # the other writer goes away after a second
        with VaultClient(server.url) as client:
            result = client.publish("busy", [Message("k", b"v")])
        assert [m.offset for m in store.reader("busy").replay()] == result.offsets
    finally:
        server.stop()


def test_slow_commits_answer_202_with_a_location_that_resolves(tmp_path):
    server = Served(str(tmp_path), "vault", "--wait", "0")
    try:
        response = post(server, "slow", json_body(("k", b"v")), **{"Idempotency-Key": "slow-1"})
        assert response.status_code == 202
        location = response.headers["location"]
        assert location == http.batch_location("slow", "slow-1")
        deadline = time.monotonic() + 10
        while (status := httpx.get(server.url + location)).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.status_code == 200 and status.json()["position"] > 0
        with VaultClient(server.url) as client:  # the client follows 202s by itself
            assert client.publish("slow", [Message("k", b"w")]).position > status.json()["position"]
    finally:
        server.stop()


def test_api_key_is_required_when_set(tmp_path):
    server = Served(str(tmp_path), "vault", "--api-key", "s3cret")
    try:
        assert post(server, "s", json_body(("k", b"v"))).status_code == 401
        assert httpx.get(f"{server.url}/api/health").status_code == 200
        with pytest.raises(Unauthorized), VaultClient(server.url, key="wrong") as client:
            client.publish("s", [Message("k", b"v")])
        with VaultClient(server.url, key="s3cret") as client:
            assert client.publish("s", [Message("k", b"v")]).position > 0
    finally:
        server.stop()
