"""Accuracy and mistakes grouped by where the faces came from, read off a predictions.csv.

    python -m analysis.by_source runs/04_affectnet/<run>/eval_test/predictions.csv

Every eval.py writes predictions.csv (one row per image). Where the reader knows each image's
file (image-folder and YOLO-layout data), the file name tells its source: the AffectNet copy in
the YOLO layout mixes AffectNet photos (image0001234.jpg) with FFHQ faces (ffhq_123.png). A
test accuracy is an average over such groups, and the groups can differ a lot: this prints each
group's size, accuracy and share of all mistakes, so you know what the number is made of.
"""
import argparse
import csv
import re
import sys
from collections import Counter
from pathlib import Path


def source_of(file):
    """A file name's leading letters and underscores: 'ffhq_' for ffhq_12.png, 'image' for
    image0001234.jpg, the whole stem when it has no digits."""
    stem = Path(file).stem
    return re.match(r"[^\d]*", stem).group(0) or stem


def group_rows(rows):
    """[(source, images, accuracy, share of all mistakes)], largest group first."""
    images = Counter(source_of(row["file"]) for row in rows)
    wrong = Counter(source_of(row["file"]) for row in rows if row["label"] != row["prediction"])
    total_wrong = sum(wrong.values())
    table = []
    for source, count in images.most_common():
        accuracy = 1 - wrong[source] / count
        share = wrong[source] / total_wrong if total_wrong else 0.0
        table.append((source, count, accuracy, share))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", help="predictions.csv written by a stage's eval.py")
    args = parser.parse_args(argv)
    with open(args.predictions, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not all(row.get("file") for row in rows):
        sys.exit(f"error: {args.predictions}: no file names (the data's reader does not keep "
                 f"them, e.g. a FER2013 CSV); nothing to group by")
    table = group_rows(rows)
    width = max(len("source"), *(len(source) for source, *_ in table))
    print(f"{'source':<{width}} {'images':>7} {'accuracy':>9} {'share of mistakes':>18}")
    for source, count, accuracy, share in table:
        print(f"{source:<{width}} {count:>7} {100 * accuracy:>8.1f}% {100 * share:>17.1f}%")


if __name__ == "__main__":
    main()
