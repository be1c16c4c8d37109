"""`python -m vault_core.cli`: the `vault` command."""

from . import main

main()
