"""``python -m mario_rl`` (what torchrun launches) runs the command line."""

import sys

from mario_rl.cli import main

sys.exit(main())
