"""Kept for the commands already written down: ``generate_ab.py ARGS`` is ``ab.py --what generate ARGS``."""

import sys

import ab

if __name__ == "__main__":
    sys.argv[1:1] = ["--what", "generate"]
    ab.main()
