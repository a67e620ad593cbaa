"""Benchmark: how long a data source takes to parse, and to reload from the parse cache.

    python -m analysis.bench_data data/fer2013.csv

The first load runs with an empty, temporary cache folder so it always measures a real parse.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `python analysis/bench_data.py`

import argparse
import tempfile
import time

from common import facedata
from common.data import load_data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a FER2013 CSV (.csv/.csv.gz) or an image-folder tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as cache:
        facedata.CACHE_DIR = Path(cache)  # an empty cache, removed afterwards: the first load really parses
        start = time.perf_counter()
        data = load_data(args.path)
        parse = time.perf_counter() - start
        start = time.perf_counter()
        load_data(args.path)
        reload = time.perf_counter() - start
    print(f"{args.path}: {data.sizes()} | parse + write cache {parse:.2f} s | cached reload {reload:.3f} s")


if __name__ == "__main__":
    main()
