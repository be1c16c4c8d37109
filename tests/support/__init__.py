"""What the tests and the benchmarks run on besides the code under test: Azurite, `vault serve`
in a subprocess, the Durable host stand-in, the processes crash tests kill, and the helpers more
than one test module uses (damaging a log, losing a response, counting reads, a stream's contents)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: where helper processes run, with -m
