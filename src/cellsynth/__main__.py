"""``python -m cellsynth`` (and ``accelerate launch -m cellsynth``): the command line."""

import sys

from cellsynth.cli import main

if __name__ == "__main__":
    sys.exit(main())
