"""Loss timing benchmark (paper Tables 10-11): ``python benchmarks/loss_timing.py [options]``.

A thin wrapper over ``energyloss run timing`` so that the benchmark and the CLI are one implementation; all options
of ``energyloss run timing --help`` are accepted, e.g. ``--device cuda``, ``--sizes 30 300 3000``, ``--out DIR``.
"""

import sys

from energyloss.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "timing", *sys.argv[1:]]))
