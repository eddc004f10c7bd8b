"""`python -m cogvlm.cli`: the `cogvlm` command (torchrun and the deepspeed launcher start it this way)."""

import sys

from cogvlm.cli import main

sys.exit(main())
