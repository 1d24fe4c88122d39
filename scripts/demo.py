"""Demo client (kept for old instructions): the same as `hyperinfer demo`, see hyperinfer/demo.py."""

import sys

from hyperinfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
