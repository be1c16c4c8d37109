"""The `vault` command line: a thin shell over vault_core for operators and consumers, one module
per group of commands (publishing, reading, operating a store, serving) and what they share.

Data goes to stdout (plain, or JSON lines with --json); progress and errors go to stderr. Exit
codes: 0 done, 1 failed (the message says what went wrong and what to do), 2 bad usage.
"""

from __future__ import annotations

import logging

import click

from .operating import delete, groups, retention, streams, trim
from .publishing import publish
from .reading import mirror, read, tail, verify
from .serving import demo, serve
from .shared import VaultGroup

__all__ = ["main"]


@click.group(cls=VaultGroup)
@click.version_option(package_name="message-vault")
def main() -> None:
    """Message Vault: publish-subscribe with replay and batching on Azure Storage."""
    # The Azure SDKs log each failed sign-in attempt and retry; the command says what went wrong once.
    logging.getLogger("azure").setLevel(logging.ERROR)


for command in (streams, publish, read, groups, tail, verify, mirror, trim, retention, delete, demo, serve):
    main.add_command(command)
