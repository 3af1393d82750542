"""``python -m llama3zh_dist.sweep +sweep=<name> [overrides]`` (see ``driver``)."""
from ..process_exit import exit_process
from .driver import main

if __name__ == "__main__":
    exit_process(main())
