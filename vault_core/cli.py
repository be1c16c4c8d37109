"""The `vault` command line."""

from __future__ import annotations

import json
import time
import uuid

import click

from . import Message, open_reader, open_store


@click.group()
@click.version_option(package_name="message-vault")
def main() -> None:
    """Message Vault: publish-subscribe with replay and batching on Azure Storage."""


@main.command()
@click.option(
    "--store",
    "target",
    default=".vault-demo",
    show_default=True,
    envvar="VAULT_STORE",
    help="A directory (embedded store), an Azure Storage connection string or an account URL.",
)
def demo(target: str) -> None:
    """Serve the HTTP API on a free loopback port, publish a few batches of order events through
    it (retrying one), then replay the stream straight from storage through its read URL."""
    import socket
    import threading

    import uvicorn

    from .client import VaultClient
    from .server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(open_store(target)), "127.0.0.1", port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/api"
    stream = "demo-orders"
    click.echo(f"vault serve on {url}, store {target}")
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


@main.command()
@click.option(
    "--store",
    "target",
    default=".vault",
    show_default=True,
    envvar="VAULT_STORE",
    help="A directory (embedded store), an Azure Storage connection string or an account URL.",
)
@click.option("--container", default="vault", show_default=True, help="Blob container, on Azure Storage.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7071, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-key", envvar="VAULT_API_KEY", help="Require this key (x-functions-key header).")
@click.option(
    "--wait",
    "wait_seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="Seconds a POST waits for its commit before answering 202.",
)
def serve(
    target: str, container: str, host: str, port: int, api_key: str | None, wait_seconds: float
) -> None:
    """Serve the HTTP API on this machine, with one in-process writer per stream."""
    import uvicorn

    from .server import create_app

    app = create_app(open_store(target, container=container), api_key=api_key, wait_seconds=wait_seconds)
    click.echo(f"Message Vault on http://{host}:{port}/api (store: {target})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
