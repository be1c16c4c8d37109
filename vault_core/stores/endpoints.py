"""What an Azure Storage endpoint's address says, for the blob and the table backends alike."""

from __future__ import annotations


def is_path_style(host: str) -> bool:
    """Whether a storage endpoint on `host` names the account in its path rather than in its
    host name: the emulator's (127.0.0.1:10000/<account>), and any at an IP address."""
    return host in ("localhost", "::1") or host[:1].isdigit()
