"""``python -m bench``: the command-line entry point."""

import os
import sys

from bench.cli import INTERRUPTED, main

code = main()
if code == INTERRUPTED:
    # Ctrl-C: leave now. What a run writes (records, checkpoints) is already written atomically
    # and synced; the interpreter's teardown of torch would add seconds on a busy machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
