"""Serve the medrefine web interface: ``python app.py [--host H] [--port P] [--share]``."""

import sys

from medrefine.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
