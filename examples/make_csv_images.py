"""Write a small CSV + PNG folder of Morpho-MNIST digits, shaped like a real dataset of images and attributes.

Run:  python examples/make_csv_images.py [FOLDER] [--rows N]      (default: csv_images_data, 600 rows; seconds)

It writes FOLDER/images/00000.png ... (28x28 grey), FOLDER/train.csv and FOLDER/test.csv with the columns
``path,thickness,intensity,digit``: real MNIST digits (bundled offline) rendered with attributes drawn from
the benchmark's SCM. ``examples/csv_images.toml`` generates the same folder itself (``prepare =
"morpho_csv"``); to run that spec on a folder written here, or on your own, replace ``prepare`` by

    csv = "FOLDER/train.csv"
    test_csv = "FOLDER/test.csv"
    image_dir = "FOLDER"

(paths relative to the spec's folder).
"""
import argparse

from pipeline.experiment.data import write_morpho_csv

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", nargs="?", default="csv_images_data", help="output folder (created)")
parser.add_argument("--rows", type=int, default=600, help="total rows; a fifth go to test.csv")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
out = write_morpho_csv(args.folder, args.rows, seed=args.seed, n_jobs=1)
print(f"wrote {out}/train.csv, {out}/test.csv and {args.rows} PNGs in {out}/images")
