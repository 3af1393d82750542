"""``python -m llama3zh_dist.sweep +sweep=<name> [overrides]`` (see ``driver``)."""
import sys

from .driver import main

if __name__ == "__main__":
    sys.exit(main())
