"""CelebA from a local copy, with chosen attributes as binary labels (:class:`CelebAAttributes`).

torchvision parses the annotation files; images are read by :mod:`pipeline.datasets.decoder`, as for the CSV
folder. Nothing here downloads or unpickles.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pipeline.datasets.decoder import DataNotFoundError, ImageReader
from pipeline.datasets.table import ImageTable, as_names, suggest_name

__all__ = ["CelebAAttributes", "CELEBA_FILES"]

#: The annotation files that ``torchvision.datasets.CelebA`` reads, next to the ``img_align_celeba/`` folder.
CELEBA_FILES: tuple[str, ...] = ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt",
                                 "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")


def _local_celeba_class() -> type:
    from torchvision.datasets import CelebA

    class _LocalCelebA(CelebA):
        """torchvision's CelebA, reading from ``root/base_folder`` without its MD5 check (done before, or waived)."""

        def __init__(self, root: str, base_folder: str, **kwargs: Any) -> None:
            self.base_folder = base_folder
            super().__init__(root, **kwargs)

        def _check_integrity(self) -> bool:
            return True

    return _LocalCelebA


class CelebAAttributes(ImageTable):
    """CelebA (aligned and cropped faces) from a local copy, with chosen attributes as binary 0/1 labels.

    An adapter over ``torchvision.datasets.CelebA(root, split=split, target_type="attr", download=False)``:
    torchvision parses the annotation files and the split; this class keeps the chosen attribute columns
    (torchvision maps CelebA's -1/1 to 0/1) and reads the images with the same decode, crop and resize as
    :class:`ImageAttributeFolder`. Nothing is ever downloaded.

    Why torchvision's integrity check is run separately: ``CelebA`` refuses any folder whose five annotation
    files do not match its MD5 sums, which also rejects re-packed copies and small test folders. With
    ``check_integrity=True`` (the default) the same MD5 check runs first and a mismatch names the file; with
    ``False`` only the presence of the files is checked. torchvision is then built with its check bypassed.

    Expected layout (``root`` may be the folder that holds ``celeba/``, or ``celeba/`` itself)::

        root/celeba/list_attr_celeba.txt  list_eval_partition.txt  identity_CelebA.txt
                    list_bbox_celeba.txt  list_landmarks_align_celeba.txt
                    img_align_celeba/000001.jpg ...

    Args:
        root: the folder (see the layout).
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"`` (``list_eval_partition.txt``'s 0 / 1 / 2).
        attributes: CelebA attribute names (from the header of ``list_attr_celeba.txt``, e.g. ``"Smiling"``).
        size: output size, one int or ``(height, width)``; ``None`` keeps the cropped size.
        crop: ``"center"`` (the default: the centred 178x178 square of the 178x218 aligned faces), ``None``,
            or ``(height, width)``.
        channels: 3 (RGB) or 1 (grey).
        interpolation: resampling filter of the resize: one of :data:`~pipeline.datasets.decoder.INTERPOLATIONS`.
        transform: a callable applied to each image tensor ``(C, H, W)`` in [-1, 1].
        check_integrity: verify the annotation files against torchvision's MD5 sums.
        cache_in_memory: decode every image of the split once at construction and keep it (``uint8``).
        progress: show tqdm bars.

    Attributes:
        attributes: name -> ``int64`` ``(N,)`` of 0/1.
        celeba: the underlying ``torchvision.datasets.CelebA`` (identity, bbox, landmarks, all 40 attributes).
        attr_names: the 40 attribute names of the file.
        filenames: the image file name of every row; paths: their full paths.
        image_shape: ``(channels, H, W)``.

    Raises:
        DataNotFoundError: ``root``, an annotation file, ``img_align_celeba/`` or a listed image is missing.
        ValueError: a bad split or argument, an unknown attribute, MD5 mismatch, unparsable annotation files.

    Example:
        >>> ds = CelebAAttributes("~/data", split="valid", attributes=("Smiling", "Male"))  # doctest: +SKIP
        >>> image, attrs = ds[0]                  # doctest: +SKIP
        >>> image.shape, attrs["Male"].dtype      # doctest: +SKIP
        (torch.Size([3, 64, 64]), torch.int64)
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 attributes: Sequence[str] = ("Smiling", "Male", "Eyeglasses"),
                 size: int | tuple[int, int] | None = 64, crop: str | int | tuple[int, int] | None = "center",
                 channels: int = 3, interpolation: str = "bilinear",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, check_integrity: bool = True,
                 cache_in_memory: bool = False, progress: bool = True) -> None:
        if split not in ("train", "valid", "test", "all"):
            raise ValueError(f"split={split!r} is not allowed: use 'train', 'valid', 'test' or 'all'")
        names = as_names(attributes, "attributes")
        if not names:
            raise ValueError("attributes is empty; name at least one CelebA attribute, e.g. ('Smiling',)")
        reader = ImageReader.build(channels, size, crop, interpolation)
        root_path = Path(os.path.expanduser(str(root)))
        self.root, self.split = str(root_path), split
        base = self._find_base(root_path)
        folder = root_path / base
        if check_integrity:
            self._verify_md5(folder)
        # torchvision parses the five annotation files and selects the split
        try:
            self.celeba = self._torchvision_celeba(str(root_path), base, split)
        except (ValueError, IndexError, RuntimeError) as exc:
            raise ValueError(f"cannot parse the CelebA annotation files in '{folder}' ({exc}); they must be the "
                             "original space-separated text files (see CelebAAttributes' layout)") from exc
        self.attr_names = [a for a in self.celeba.attr_names if a]
        for name in names:
            if name not in self.attr_names:
                raise ValueError(f"attribute {name!r} is not a CelebA attribute{suggest_name(name, self.attr_names)}; "
                                 f"the attributes of '{folder / 'list_attr_celeba.txt'}' are {self.attr_names}")
        if self.celeba.attr.shape[1] != len(self.attr_names):
            raise ValueError(f"'{folder / 'list_attr_celeba.txt'}' names {len(self.attr_names)} attributes but its "
                             f"rows hold {self.celeba.attr.shape[1]} values; the file is corrupted")
        self.filenames = [str(f) for f in self.celeba.filename]
        if not self.filenames:
            raise ValueError(f"split={split!r} of '{folder}' has no images (list_eval_partition.txt marks none "
                             "with its code); pick another split")
        columns = {name: self.attr_names.index(name) for name in names}
        attr = self.celeba.attr
        self.attributes = {name: attr[:, j].to(torch.int64).clone() for name, j in columns.items()}
        self.kinds = {name: "binary" for name in names}
        self.classes = {}
        image_dir = folder / "img_align_celeba"
        self.paths = [str(image_dir / f) for f in self.filenames]
        missing = [k for k, p in enumerate(self.paths) if not os.path.isfile(p)]
        if missing:
            raise DataNotFoundError(f"{len(missing)} image(s) of split={split!r} listed in "
                                    f"list_eval_partition.txt are missing from '{image_dir}', e.g. "
                                    f"{[self.filenames[k] for k in missing[:3]]}; unzip img_align_celeba.zip there")
        self._setup_images(reader, transform, bool(cache_in_memory), bool(progress))

    def _where(self, row: int) -> str:
        return f"CelebA {self.split} row {row} ({self.filenames[row]})"

    @staticmethod
    def _torchvision_celeba(root: str, base: str, split: str) -> Any:
        local_celeba = _local_celeba_class()
        try:
            return local_celeba(root, base, split=split, target_type="attr", download=False)
        except TypeError as exc:
            if "0-d tensor" not in str(exc):
                raise
        # torchvision cannot select a split of exactly one image (it iterates over a squeezed 0-d index
        # tensor): load every row and select the split with torchvision's own parser of the partition file
        celeba = local_celeba(root, base, split="all", target_type="attr", download=False)
        code = {"train": 0, "valid": 1, "test": 2}[split]
        keep = torch.nonzero(celeba._load_csv("list_eval_partition.txt").data[:, 0] == code).reshape(-1)
        celeba.split = split
        celeba.filename = [celeba.filename[int(k)] for k in keep]
        for field in ("identity", "bbox", "landmarks_align", "attr"):
            setattr(celeba, field, getattr(celeba, field)[keep])
        return celeba

    @staticmethod
    def _layout_hint(root: Path) -> str:
        return (f"put the CelebA files (from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) as "
                f"'{root / 'celeba'}/' holding {list(CELEBA_FILES)} and the folder 'img_align_celeba/' "
                "(unzipped img_align_celeba.zip); dcfg never downloads")

    def _find_base(self, root: Path) -> str:
        if not root.is_dir():
            raise DataNotFoundError(f"CelebA folder '{root}' does not exist; {self._layout_hint(root)}")
        for base in ("celeba", ""):
            if (root / base / CELEBA_FILES[0]).is_file():
                break
        else:
            raise DataNotFoundError(f"'{root}' holds no 'celeba/{CELEBA_FILES[0]}' (nor '{CELEBA_FILES[0]}'); "
                                    f"{self._layout_hint(root)}")
        folder = root / base
        missing = [f for f in CELEBA_FILES if not (folder / f).is_file()]
        if not (folder / "img_align_celeba").is_dir():
            missing.append("img_align_celeba/")
        if missing:
            raise DataNotFoundError(f"the CelebA folder '{folder}' lacks {missing}; "
                                    f"{self._layout_hint(root if base else root.parent)}")
        return base

    @staticmethod
    def _verify_md5(folder: Path) -> None:
        from torchvision.datasets import CelebA
        from torchvision.datasets.utils import check_integrity

        for _, md5, filename in CelebA.file_list:
            if os.path.splitext(filename)[1] in (".zip", ".7z"):
                continue
            if not check_integrity(str(folder / filename), md5):
                raise ValueError(f"'{folder / filename}' does not match torchvision's MD5 sum {md5} for the "
                                 "original CelebA file (corrupted, edited or re-packed); restore the original, or "
                                 "pass check_integrity=False to read it anyway")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} rows, split={self.split!r}, image {self.image_shape}, "
                f"attributes {list(self.attributes)})")
