"""The `vault` command line."""

from __future__ import annotations

import json

import click

from . import Message, open_store


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
    """Publish a few batches of order events, retry one, then replay the stream."""
    store = open_store(target)
    stream = "demo-orders"
    click.echo(f"store: {store!r}, stream: {stream}")
    with store.writer(stream) as writer:
        start = writer.position
        click.echo(f"\npublishing (the stream is at position {start})")
        for order in range(1, 4):
            events = [
                Message("order-created", json.dumps({"order": order, "items": order * 2}).encode()),
                Message("order-paid", json.dumps({"order": order, "amount": 9.5 * order}).encode()),
            ]
            result = writer.append(events, batch_id=f"demo-{start}-order-{order}")
            click.echo(
                f"  batch order-{order}: offsets {result.offsets}, committed position {result.position}"
            )
        retried = writer.append(events, batch_id=f"demo-{start}-order-3")
        click.echo(f"  retried batch order-3: same result {retried.offsets}, nothing appended")
    reader = store.reader(stream)
    click.echo(f"\nreplaying from position {start}")
    for message in reader.replay(start):
        when = message.timestamp.isoformat(timespec="milliseconds")
        click.echo(f"  {message.offset:>8}  {when}  {message.key:<14} {message.value.decode()}")
    page = reader.read(result.offsets[0], max_messages=1)
    click.echo(f"\nreading one message from offset {result.offsets[0]}: {page.messages[0].key}")
    click.echo(f"the next read continues at {page.next_position}")
    click.echo(f"\nread-only URL for consumers: {store.read_url(stream)}")


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
