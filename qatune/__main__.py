"""``python -m qatune`` (also what torchrun / accelerate launch run)."""

import sys

from qatune.cli import main

if __name__ == "__main__":
    sys.exit(main())
