"""`python -m declip.cli` (used by torchrun for multi-GPU distillation)."""

import sys

from declip.cli import main

sys.exit(main(sys.argv[1:]))  # in this process: never through the job server
