"""``vmaild-authpipe``: placeholder until the authpipe relay lands."""

import sys


def main() -> int:
    print("vmaild-authpipe: not implemented yet", file=sys.stderr)
    return 1
