"""Entry point: ``python -m raylaw.tune COMMAND ...`` (see ``--help``)."""

import sys

from raylaw.cli import main

if __name__ == "__main__":
    sys.exit(main())
