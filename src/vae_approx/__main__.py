"""Commands over whole runs: python -m vae_approx <command> (each stage of an experiment has its own module,
python -m vae_approx.<experiment>).

    python -m vae_approx compare results/<a> results/<b> [--rtol 1e-6] [--out comparison.md]
"""

from __future__ import annotations

import argparse
import sys

from . import compare
from .common import InputError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    compare.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InputError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
