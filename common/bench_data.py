"""Benchmark: how long a data source takes to parse, and to reload from the parse cache.

    python -m common.bench_data data/fer2013.csv

The first load runs with an empty, temporary cache folder so it always measures a real parse.
"""
import argparse
import os
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a FER2013 CSV (.csv/.csv.gz) or an image-folder tree")
    args = parser.parse_args()
    os.environ["FER_CACHE_DIR"] = tempfile.mkdtemp(prefix="fer-bench-")  # before common.runtime is imported
    from common.data import load_data

    start = time.perf_counter()
    data = load_data(args.path)
    parse = time.perf_counter() - start
    start = time.perf_counter()
    load_data(args.path)
    reload = time.perf_counter() - start
    print(f"{args.path}: {data.sizes()} | parse + write cache {parse:.2f} s | cached reload {reload:.3f} s")


if __name__ == "__main__":
    main()
