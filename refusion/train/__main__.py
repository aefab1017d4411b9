"""``python -m refusion.train`` and ``torchrun --nproc_per_node N -m refusion.train``."""

import sys

from refusion.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
