"""What the tests and the benchmarks run on besides the code under test: Azurite, `vault serve`
in a subprocess, the Durable host stand-in, and the processes crash tests kill."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: where helper processes run, with -m
