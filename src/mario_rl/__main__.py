"""``python -m mario_rl`` (what torchrun launches) runs the command line."""

import sys

from mario_rl.cli import main

# Guarded: A3G's spawned workers re-import the main module, which must not run the CLI again.
if __name__ == "__main__":
    sys.exit(main())
