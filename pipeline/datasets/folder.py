"""Real-data loaders, kept importable from their former module: the decoder, the CSV dataset and CelebA now live
in :mod:`pipeline.datasets.decoder`, :mod:`pipeline.datasets.csv_folder` and :mod:`pipeline.datasets.celeba`
(their shared Dataset base in :mod:`pipeline.datasets.table`).
"""
from pipeline.datasets.celeba import CELEBA_FILES, CelebAAttributes
from pipeline.datasets.csv_folder import IMAGE_COLUMN_CANDIDATES, MAX_CLASSES, ImageAttributeFolder
from pipeline.datasets.decoder import INTERPOLATIONS, DataNotFoundError

__all__ = ["ImageAttributeFolder", "CelebAAttributes", "DataNotFoundError", "IMAGE_COLUMN_CANDIDATES",
           "INTERPOLATIONS", "MAX_CLASSES", "CELEBA_FILES"]
