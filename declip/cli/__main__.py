"""`python -m declip.cli` (used by torchrun for multi-GPU distillation)."""

import sys

from declip.cli import main

sys.exit(main())
