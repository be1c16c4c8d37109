"""`vault serve` (the HTTP API on this machine) and `vault demo`."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import click

from .. import Message, metrics, open_reader
from .shared import (
    container_option,
    open_target,
    store_option,
)


@click.command()
@store_option(default=".vault-demo")
@container_option
def demo(target: str, container: str) -> None:
    """Serve the HTTP API on a free loopback port, publish a few batches of order events through
    it (retrying one), then replay the stream straight from storage through its read URL."""
    import socket
    import threading

    import uvicorn

    from ..client import VaultClient
    from ..server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = open_target(target, container)
    server = uvicorn.Server(uvicorn.Config(create_app(store), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/api"
    stream = "demo-orders"
    click.echo(f"vault serve on {url}, store {store}")
    try:
        with VaultClient(url) as client:
            click.echo("\npublishing through the HTTP API")
            run, this_run = uuid.uuid4().hex[:8], 0
            for order in range(1, 4):
                events = [
                    Message("order-created", json.dumps({"order": order, "items": order * 2}).encode()),
                    Message("order-paid", json.dumps({"order": order, "amount": 9.5 * order}).encode()),
                ]
                result = client.publish(stream, events, idempotency_key=f"demo-{run}-{order}")
                this_run = this_run or result.offsets[0]
                click.echo(f"  batch {order}: offsets {result.offsets}, committed position {result.position}")
            retried = client.publish(stream, events, idempotency_key=f"demo-{run}-3")
            click.echo(
                f"  batch 3 retried with its Idempotency-Key: offsets {retried.offsets}, nothing appended"
            )
            info = client.stream_info(stream)
    finally:
        server.should_exit = True
        thread.join()
    first = result.offsets[0]
    click.echo(f"\nreplaying this run's batches straight from storage, via {info.read_url}")
    reader = open_reader(info.read_url)
    for message in reader.replay(this_run):
        when = message.timestamp.isoformat(timespec="milliseconds")
        click.echo(f"  {message.offset:>8}  {when}  {message.key:<14} {message.value.decode()}")
    page = reader.read(first, max_messages=1)
    click.echo(f"\nreading one message from offset {first}: {page.messages[0].key}")
    click.echo(f"the next read continues at {page.next_position}")
    shown = target if "://" not in str(store) else "$VAULT_STORE"  # a connection string is not shown
    click.echo(
        "\nwhat to try next:\n"
        f"  .venv/bin/vault read {stream} --store {shown}        # the stream, in the terminal\n"
        f"  .venv/bin/vault serve --store {shown}                # the HTTP API, and the console at "
        "http://127.0.0.1:7071/\n"
        "  README.md: the vault command, the library, the HTTP API and the Function App"
    )


@click.command()
@store_option(default=".vault")
@container_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7071, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--api-key",
    envvar="VAULT_API_KEY",
    help="Require this key, in the x-functions-key header or ?code= (as Azure Functions takes "
    "function keys). Env: VAULT_API_KEY.",
)
@click.option(
    "--wait",
    "wait_seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="Seconds a POST waits for its commit before answering 202.",
)
@click.option(
    "--lease-seconds",
    default=60,
    show_default=True,
    type=click.IntRange(15, 60),
    help="The writers' blob lease: after a crash, how long a restarted server waits for its streams.",
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Take each stream over from any other writer at once (fencing it) instead of waiting "
    "for its lease: for a server that is its streams' only writer, restarted after a crash.",
)
@click.option(
    "--without-key",
    is_flag=True,
    help="Serve on an address other than loopback with no API key: anyone who can reach it can "
    "publish and read. Refused without this flag.",
)
@click.option(
    "--max-bodies",
    "max_bodies_mib",
    default=64,
    show_default=True,
    type=click.IntRange(16, 65536),
    help="MiB of request bodies held at once; past it, a POST is answered 503 with Retry-After.",
)
def serve(
    target: str,
    container: str,
    host: str,
    port: int,
    api_key: str | None,
    wait_seconds: float,
    lease_seconds: int,
    takeover: bool,
    without_key: bool,
    max_bodies_mib: int,
) -> None:
    """Serve the HTTP API on this machine, with one in-process writer per stream. Each request is
    logged on stderr in one line (never its query string, which may hold a key)."""
    import ipaddress
    import socket

    import uvicorn

    from ..server import create_app

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not api_key and not without_key:
        raise click.UsageError(
            f"--host {host} without an API key would let anyone who can reach this machine publish: "
            "give --api-key (or VAULT_API_KEY), or --without-key if that is what you want"
        )
    if api_key and without_key:
        raise click.UsageError("--api-key and --without-key contradict: give one of them")

    try:  # a port in use is one line here, not uvicorn's log
        socket.create_server((host, port), reuse_port=False).close()
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({os.strerror(error.errno or 0)}): another process has it; "
            "pass --port"
        ) from None
    store = open_target(target, container)
    metrics.install()  # what GET /metrics answers with
    app = create_app(
        store,
        api_key=api_key,
        wait_seconds=wait_seconds,
        lease_seconds=lease_seconds,
        takeover=takeover,
        body_budget=max_bodies_mib * 1024 * 1024,
    )
    # The store as it prints itself: a connection string's key or a SAS never reaches the output.
    click.echo(f"Message Vault on http://{host}:{port}/api (store: {store})", err=True)
    if not loopback and not api_key:
        click.echo(f"no API key: anyone who can reach {host}:{port} can publish and read", err=True)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    served = logging.getLogger("vault.serve")
    served.addHandler(handler)
    served.setLevel(logging.INFO)
    served.propagate = False
    uvicorn.run(app, host=host, port=port, log_level="warning")
