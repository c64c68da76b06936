"""Real-data loaders: ImageAttributeFolder (images + CSV) and CelebAAttributes (a local CelebA copy).

Every fixture is written by the tests: a dozen small PNGs with a CSV of mixed attribute columns, and a
tiny fake CelebA folder in the original text-file format that torchvision's CelebA parses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import pipeline.datasets.csv_folder as csv_folder_module
from pipeline.datasets import CelebAAttributes, DataNotFoundError, ImageAttributeFolder
from scm import CausalGraph

H, W = 10, 12
N = 12


def write_folder(root: Path, images: list[np.ndarray], table: dict[str, list], name: str = "attrs.csv",
                 ext: str = "png") -> Path:
    """Save ``images[k]`` as ``root/img/{k:02d}.{ext}`` and ``table`` (plus a ``path`` column) as a CSV."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    paths = []
    for k, array in enumerate(images):
        paths.append(f"{k:02d}.{ext}")
        Image.fromarray(array).save(root / "img" / paths[-1])
    frame = pd.DataFrame({"path": paths, **table})
    frame.to_csv(root / name, index=False)
    return root / name


def mixed_table(n: int = N) -> dict[str, list]:
    rng = np.random.default_rng(1)
    return {
        "age": list(np.round(rng.uniform(20, 90, n), 2)),         # positive float -> continuous
        "score": list(np.round(rng.normal(0, 1, n), 3)),          # real float -> continuous
        "sex": [["F", "M"][k % 2] for k in range(n)],             # strings -> categorical, 2 classes
        "finding": [["none", "effusion", "mass"][k % 3] for k in range(n)],  # strings -> 3 classes
        "smoker": [bool(k % 4 == 0) for k in range(n)],           # booleans -> binary
        "flag": [k % 2 for k in range(n)],                        # ints 0/1 -> binary
        "grade": [k % 5 for k in range(n)],                       # ints -> continuous unless categorical
        "note": ["free text %d" % k for k in range(n)],           # would be categorical; usually left out
    }


@pytest.fixture()
def rgb(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N)]
    csv = write_folder(tmp_path / "rgb", images, mixed_table())
    return csv, tmp_path / "rgb" / "img", images


@pytest.fixture()
def grey(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(N)]
    csv = write_folder(tmp_path / "grey", images, {"age": list(range(30, 30 + N))})
    return csv, tmp_path / "grey" / "img", images


def unit(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0)


# ---------------------------------------------------------------------------------------------- images
def test_rgb_items_are_the_files_pixels_in_minus_one_one(rgb):
    csv, image_dir, images = rgb
    ds = ImageAttributeFolder(csv, image_dir, channels=3, progress=False)
    assert len(ds) == N and ds.image_shape == (3, H, W)
    for k in (0, 5, N - 1):
        x, attrs = ds[k]
        assert x.dtype == torch.float32 and x.shape == (3, H, W)
        torch.testing.assert_close(x, unit(images[k].transpose(2, 0, 1)), rtol=0, atol=1e-6)
    assert float(ds[0][0].min()) >= -1 and float(ds[0][0].max()) <= 1
    torch.testing.assert_close(ds[-1][0], ds[N - 1][0])


def test_grey_images_and_channel_conversion(grey, rgb):
    csv, image_dir, images = grey
    ds1 = ImageAttributeFolder(csv, image_dir, channels=1, progress=False)
    ds3 = ImageAttributeFolder(csv, image_dir, channels=3, progress=False)
    torch.testing.assert_close(ds1[3][0], unit(images[3])[None], rtol=0, atol=1e-6)
    assert ds3.image_shape == (3, H, W)
    torch.testing.assert_close(ds3[3][0], unit(images[3])[None].expand(3, H, W), rtol=0, atol=1e-6)
    # RGB -> grey is Pillow's ITU-R 601-2 luma
    csv, image_dir, rgb_images = rgb
    x = ImageAttributeFolder(csv, image_dir, channels=1, progress=False)[2][0]
    r, g, b = (rgb_images[2][..., c].astype(np.float64) for c in range(3))
    luma = (r * 299 + g * 587 + b * 114) / 1000
    assert x.shape == (1, H, W)
    assert float((x[0].double() - torch.from_numpy(luma / 127.5 - 1)).abs().max()) <= 1.01 / 127.5


def test_sixteen_bit_png_keeps_its_depth(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 65536, (H, W), dtype=np.uint16) for _ in range(3)]
    images[2] = (1000 + np.arange(H * W)).astype(np.uint16).reshape(H, W)  # 120 levels within one 8-bit level
    csv = write_folder(tmp_path, images, {"age": [40.0, 50.0, 60.0]})
    assert Image.open(tmp_path / "img" / "00.png").mode.startswith("I")
    ds = ImageAttributeFolder(csv, tmp_path / "img", channels=1, progress=False)
    expected = torch.from_numpy(images[1].astype(np.float64) / 65535 * 2 - 1).float()[None]
    torch.testing.assert_close(ds[1][0], expected, rtol=0, atol=1e-6)
    # finer than 8 bits: values that share one 8-bit level stay distinct
    assert len(torch.unique(ds[2][0])) == H * W
    ds3 = ImageAttributeFolder(csv, tmp_path / "img", channels=3, size=5, progress=False)
    x = ds3[0][0]
    assert x.shape == (3, 5, 5) and torch.equal(x[0], x[2])


def test_jpeg_images_are_read(tmp_path):
    colours = [(200, 30, 90), (10, 240, 120), (128, 128, 128)]
    images = [np.broadcast_to(np.array(c, np.uint8), (16, 16, 3)).copy() for c in colours]
    csv = write_folder(tmp_path, images, {"age": [1.0, 2.0, 3.0]}, ext="jpg")
    ds = ImageAttributeFolder(csv, tmp_path / "img", channels=3, progress=False)
    for k, c in enumerate(colours):
        mean = ds[k][0].mean(dim=(1, 2))
        torch.testing.assert_close(mean, torch.tensor(c, dtype=torch.float32) / 127.5 - 1, rtol=0, atol=4 / 127.5)


@pytest.mark.parametrize("crop, window", [((4, 6), (3, 7, 3, 9)), ("center", (0, 10, 1, 11)), (5, (2, 7, 3, 8))])
def test_crop_is_a_centred_window_of_the_original(rgb, crop, window):
    csv, image_dir, images = rgb
    ds = ImageAttributeFolder(csv, image_dir, channels=3, crop=crop, progress=False)
    top, bottom, left, right = window
    assert ds.image_shape == (3, bottom - top, right - left)
    torch.testing.assert_close(ds[4][0], unit(images[4][top:bottom, left:right].transpose(2, 0, 1)), rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("interpolation", ["box", "nearest", "bilinear"])
def test_resize_of_a_block_image_recovers_the_blocks(tmp_path, interpolation):
    rng = np.random.default_rng(4)
    small = [rng.integers(0, 256, (4, 5), dtype=np.uint8) for _ in range(2)]
    big = [np.kron(s, np.ones((4, 4), np.uint8)) for s in small]  # 16 x 20, each pixel a 4x4 block
    csv = write_folder(tmp_path, big, {"age": [1.0, 2.0]})
    ds = ImageAttributeFolder(csv, tmp_path / "img", size=(4, 5), interpolation=interpolation, progress=False)
    assert ds.image_shape == (1, 4, 5)
    x = ds[1][0]
    if interpolation == "bilinear":  # antialiased: each output pixel averages its block (plus a small halo)
        assert float((x - unit(small[1])[None]).abs().mean()) < 0.25
    else:
        torch.testing.assert_close(x, unit(small[1])[None], rtol=0, atol=1e-6)


def test_crop_then_resize_and_transform(rgb):
    csv, image_dir, images = rgb
    plain = ImageAttributeFolder(csv, image_dir, channels=3, crop="center", size=(6, 8), progress=False)
    assert plain.image_shape == (3, 6, 8) and plain[0][0].shape == (3, 6, 8)
    flipped = ImageAttributeFolder(csv, image_dir, channels=3, crop="center", size=(6, 8),
                                   transform=lambda x: torch.flip(x, dims=(-1,)), progress=False)
    torch.testing.assert_close(flipped[7][0], torch.flip(plain[7][0], dims=(-1,)))
    assert torch.equal(flipped[7][1]["age"], plain[7][1]["age"])


def test_cache_in_memory_decodes_once(rgb):
    csv, image_dir, images = rgb
    ds = ImageAttributeFolder(csv, image_dir, channels=3, size=6, cache_in_memory=True, progress=False)
    reference = ImageAttributeFolder(csv, image_dir, channels=3, size=6, progress=False)
    first = ds[3][0]
    torch.testing.assert_close(first, reference[3][0], rtol=0, atol=0)
    for path in image_dir.iterdir():
        path.unlink()
    torch.testing.assert_close(ds[3][0], first, rtol=0, atol=0)
    with pytest.raises(DataNotFoundError, match=r"row 3 of .*attrs\.csv, line 5: image file .*03\.png' does not"):
        reference[3]


# ---------------------------------------------------------------------------------------------- attributes
def test_column_types_follow_the_dtype_rules(rgb):
    csv, image_dir, _ = rgb
    table = mixed_table()
    ds = ImageAttributeFolder(csv, image_dir, columns=["age", "score", "sex", "finding", "smoker", "flag", "grade"],
                              categorical=["grade"], progress=False)
    assert ds.kinds == {"age": "continuous", "score": "continuous", "sex": "categorical",
                        "finding": "categorical", "smoker": "binary", "flag": "binary", "grade": "categorical"}
    assert ds.classes == {"sex": ["F", "M"], "finding": ["effusion", "mass", "none"]}
    a = ds.attributes
    assert a["age"].dtype == torch.float32 and a["sex"].dtype == torch.int64 and a["smoker"].dtype == torch.int64
    torch.testing.assert_close(a["age"], torch.tensor(table["age"], dtype=torch.float32))
    assert a["sex"].tolist() == [ds.classes["sex"].index(s) for s in table["sex"]]
    assert a["finding"].tolist() == [ds.classes["finding"].index(s) for s in table["finding"]]
    assert a["smoker"].tolist() == [int(s) for s in table["smoker"]]
    assert a["grade"].tolist() == table["grade"] and a["flag"].tolist() == table["flag"]
    # every item carries exactly the selected columns, equal to .attributes at its row
    _, item = ds[5]
    assert set(item) == set(ds.columns) and "note" not in item and "path" not in item
    assert all(item[n].shape == () and item[n] == a[n][5] for n in item)
    # without categorical=, an integer column that is not 0/1 is continuous; continuous= forces floats
    ds2 = ImageAttributeFolder(csv, image_dir, columns=["grade", "flag", "smoker"], continuous=["flag", "smoker"],
                               progress=False)
    assert ds2.kinds == {"grade": "continuous", "flag": "continuous", "smoker": "continuous"}
    assert ds2.attributes["flag"].dtype == torch.float32


def test_default_columns_are_all_but_the_image_column(grey):
    csv, image_dir, _ = grey
    ds = ImageAttributeFolder(csv, image_dir, progress=False)
    assert ds.columns == ["age"] and ds.image_column == "path"
    assert ds.attributes["age"].tolist() == list(range(30, 30 + N))


def test_dataframe_input_and_explicit_image_column(rgb):
    csv, image_dir, _ = rgb
    frame = pd.read_csv(csv).rename(columns={"path": "png_file"}).iloc[::2]
    ds = ImageAttributeFolder(frame, image_dir, columns=["age"], image_column="png_file", progress=False)
    assert len(ds) == N // 2
    assert ds.paths[1].endswith("02.png")
    torch.testing.assert_close(ds.attributes["age"], torch.tensor(frame["age"].to_numpy(), dtype=torch.float32))


def test_node_specs_build_a_causal_graph(rgb):
    csv, image_dir, _ = rgb
    ds = ImageAttributeFolder(csv, image_dir, columns=["age", "score", "sex", "finding", "smoker", "grade"],
                              categorical=["grade"], size=8, progress=False)
    specs = ds.node_specs(image="image")
    assert specs == {"age": {"kind": "positive"}, "score": {"kind": "real"}, "sex": {"kind": "categorical",
                     "cardinality": 2}, "finding": {"kind": "categorical", "cardinality": 3},
                     "smoker": {"kind": "binary"}, "grade": {"kind": "categorical", "cardinality": 5},
                     "image": {"kind": "image", "shape": [1, 8, 8]}}
    assert ds.node_specs(bounds={"age": (0, 120)})["age"] == {"kind": "interval", "low": 0.0, "high": 120.0}
    edges = [["age", "finding"], ["sex", "finding"]] + [[n, "image"] for n in ds.columns]
    graph = CausalGraph.from_dict({"nodes": specs, "edges": edges})
    assert graph.image_parents() == ds.columns


def test_getitems_and_dataloader_batches(rgb):
    csv, image_dir, _ = rgb
    ds = ImageAttributeFolder(csv, image_dir, columns=["age", "sex"], channels=3, progress=False)
    batch = ds.__getitems__([4, 0, 9])
    for got, k in zip(batch, [4, 0, 9]):
        torch.testing.assert_close(got[0], ds[k][0])
        assert got[1].keys() == ds[k][1].keys() and all(torch.equal(got[1][n], ds[k][1][n]) for n in got[1])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)
    images, attrs = next(iter(loader))
    assert images.shape == (5, 3, H, W)
    assert attrs["sex"].dtype == torch.int64 and attrs["sex"].tolist() == ds.attributes["sex"][:5].tolist()
    with pytest.raises(IndexError, match="index 12 is out of range"):
        ds[12]
    with pytest.raises(TypeError, match="must be an integer"):
        ds[1.5]


def test_the_former_module_still_exports_every_name():
    import pipeline.datasets.folder as folder_module
    from pipeline.datasets import celeba, decoder

    for name in folder_module.__all__:
        owner = next(m for m in (csv_folder_module, celeba, decoder) if name in m.__all__)
        assert getattr(folder_module, name) is getattr(owner, name)


# ---------------------------------------------------------------------------------------------- folder errors
def test_missing_csv_and_image_dir(rgb, tmp_path):
    csv, image_dir, _ = rgb
    with pytest.raises(DataNotFoundError, match=r"CSV file '.*nope\.csv' does not exist"):
        ImageAttributeFolder(tmp_path / "nope.csv", image_dir)
    with pytest.raises(ValueError, match=r"image folder '.*nowhere' does not exist"):
        ImageAttributeFolder(csv, tmp_path / "nowhere")


def test_missing_image_file_names_the_row(rgb):
    csv, image_dir, _ = rgb
    (image_dir / "04.png").unlink()
    (image_dir / "07.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"row 4 of .*attrs\.csv, line 6: image file '.*04\.png' does "
                                                r"not exist \(and 1 more row\(s\), e\.g\. rows \[7\]\)"):
        ImageAttributeFolder(csv, image_dir, size=4)


def test_unreadable_image_names_the_file(rgb):
    csv, image_dir, _ = rgb
    (image_dir / "03.png").write_bytes(b"this is not a png")
    raw = (image_dir / "05.png").read_bytes()
    (image_dir / "05.png").write_bytes(raw[: len(raw) // 2])
    # with a fixed size nothing is read up front: the error comes when the row is fetched
    ds = ImageAttributeFolder(csv, image_dir, size=4, progress=False)
    with pytest.raises(ValueError, match=r"row 3 of .*line 5: cannot read image '.*03\.png'"):
        ds[3]
    with pytest.raises(ValueError, match=r"row 5 of .*: cannot read image '.*05\.png'.*truncated"):
        ds[5]
    assert ds[4][0].shape == (1, 4, 4)
    # without a size every header is read at construction
    with pytest.raises(ValueError, match=r"row 3 of .*: cannot read image '.*03\.png'"):
        ImageAttributeFolder(csv, image_dir, progress=False)


def test_mixed_image_sizes_need_a_size(tmp_path):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(3)]
    images[2] = images[2][:8]
    csv = write_folder(tmp_path, images, {"age": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"images differ in size: '.*00\.png' gives 10x12 and '.*02\.png' \(row 2"
                                         r".*\) gives 8x12 pixels.*pass size="):
        ImageAttributeFolder(csv, tmp_path / "img", progress=False)
    ds = ImageAttributeFolder(csv, tmp_path / "img", size=6, progress=False)
    assert ds[2][0].shape == ds[0][0].shape == (1, 6, 6)
    with pytest.raises(ValueError, match=r"row 2 .*crop=\(9, 9\) \(height, width\) is larger than image .*8x12"):
        ImageAttributeFolder(csv, tmp_path / "img", crop=9, progress=False)[2]


def test_column_errors(rgb):
    csv, image_dir, _ = rgb
    with pytest.raises(ValueError, match=r"column 'agee' is not in .*did you mean 'age'.*available columns"):
        ImageAttributeFolder(csv, image_dir, columns=["agee"])
    with pytest.raises(ValueError, match="columns lists the image column 'path'"):
        ImageAttributeFolder(csv, image_dir, columns=["age", "path"])
    with pytest.raises(ValueError, match=r"columns lists \['age'\] more than once"):
        ImageAttributeFolder(csv, image_dir, columns=["age", "age"])
    with pytest.raises(ValueError, match=r"image_column='file_name' is not in .*columns:"):
        ImageAttributeFolder(csv, image_dir, image_column="file_name")
    with pytest.raises(ValueError, match=r"categorical lists 'sexx', which is not an attribute column.*'sex'"):
        ImageAttributeFolder(csv, image_dir, columns=["sex"], categorical=["sexx"])
    with pytest.raises(ValueError, match=r"\['grade'\] are listed both as categorical and as continuous"):
        ImageAttributeFolder(csv, image_dir, columns=["grade"], categorical=["grade"], continuous=["grade"])
    with pytest.raises(ValueError, match=r"column 'sex' holds text \(e\.g\. 'F' at row 0 .*cannot be continuous"):
        ImageAttributeFolder(csv, image_dir, columns=["sex"], continuous=["sex"])
    # the free-text column has 12 classes: over a small limit it is refused with a hint
    with pytest.raises(ValueError, match=r"categorical column 'note' has 12 classes, more than max_classes=10"):
        ImageAttributeFolder(csv, image_dir, max_classes=10)


def test_image_column_must_be_found(tmp_path):
    frame = pd.DataFrame({"picture": ["a.png"], "age": [1.0]})
    (tmp_path / "img").mkdir()
    with pytest.raises(ValueError, match=r"cannot tell which column holds the image paths: none of .*image_column="):
        ImageAttributeFolder(frame, tmp_path / "img")
    frame = pd.DataFrame({"path": ["a.png"], "filename": ["a.png"], "age": [1.0]})
    with pytest.raises(ValueError, match=r"several of them \(\['path', 'filename'\]\)"):
        ImageAttributeFolder(frame, tmp_path / "img")
    frame = pd.DataFrame({"path": ["a.png", None], "age": [1.0, 2.0]})
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(ValueError, match=r"row 1 of <DataFrame>: the image column 'path' is empty"):
        ImageAttributeFolder(frame, tmp_path / "img")
    with pytest.raises(ValueError, match="no attribute columns"):
        ImageAttributeFolder(pd.DataFrame({"path": ["a.png"]}), tmp_path / "img")


def test_nan_and_bad_categorical_values(tmp_path):
    images = [np.zeros((4, 4), np.uint8)] * 4
    csv = write_folder(tmp_path, images, {"age": [50.0, 60.0, None, 70.0], "site": ["a", "b", "a", "c"],
                                          "level": [0, 2, 1, 3], "dose": [0.5, 1.0, 2.0, 1.0],
                                          "stage": [0, -1, 2, 1], "code": [0, 5000, 1, 2]})
    img = tmp_path / "img"
    with pytest.raises(ValueError, match=r"column 'age' has 1 missing value\(s\) \(NaN or empty\), first at row 2 "
                                         r"of .*line 4"):
        ImageAttributeFolder(csv, img)
    ds = ImageAttributeFolder(csv, img, columns=["site", "level"], categorical=["level"], progress=False)
    assert ds.attributes["level"].tolist() == [0, 2, 1, 3] and ds.node_specs()["level"]["cardinality"] == 4
    with pytest.raises(ValueError, match=r"categorical column 'dose' has the non-integer value 0\.5 at row 0"):
        ImageAttributeFolder(csv, img, columns=["dose"], categorical=["dose"])
    with pytest.raises(ValueError, match=r"categorical column 'stage' has the negative value -1 at row 1 .*>= 0"):
        ImageAttributeFolder(csv, img, columns=["stage"], categorical=["stage"])
    with pytest.raises(ValueError, match=r"categorical column 'code' has values up to 5000, i\.e\. 5001 classes, "
                                         r"more than max_classes=1000"):
        ImageAttributeFolder(csv, img, columns=["code"], categorical=["code"])
    frame = pd.DataFrame({"path": ["00.png"] * 2, "when": pd.to_datetime(["2020-01-01", "2021-01-01"])})
    with pytest.raises(ValueError, match=r"column 'when' has dtype datetime64.*neither numeric, boolean nor text"):
        ImageAttributeFolder(frame, img)
    frame = pd.DataFrame({"path": ["00.png"] * 2, "x": [1.0, float("inf")]})
    with pytest.raises(ValueError, match=r"column 'x' has a non-finite value \(inf\) at row 1"):
        ImageAttributeFolder(frame, img)


def test_too_many_classes_by_default(tmp_path):
    (tmp_path / "img").mkdir()
    frame = pd.DataFrame({"path": [f"{k}.png" for k in range(1001)], "patient": [f"p{k}" for k in range(1001)]})
    # the columns are checked before the (absent) image files
    with pytest.raises(ValueError, match=r"categorical column 'patient' has 1001 classes, more than "
                                         r"max_classes=1000 \(an ID or free-text column\?\)"):
        ImageAttributeFolder(frame, tmp_path / "img")


def test_empty_and_unparsable_csv(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "empty.csv").write_text("path,age\n")
    with pytest.raises(ValueError, match=r"empty\.csv: the table has no rows"):
        ImageAttributeFolder(tmp_path / "empty.csv", tmp_path / "img")
    (tmp_path / "bad.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"bad\.csv: cannot be parsed as CSV"):
        ImageAttributeFolder(tmp_path / "bad.csv", tmp_path / "img")


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": 2}, r"channels=2 is not allowed: use 1 \(grey\) or 3 \(RGB\)"),
    ({"channels": True}, r"channels=True is not allowed"),
    ({"size": 0}, r"size=\(0, 0\) is not allowed: use None, a positive int"),
    ({"size": (4, 4, 4)}, r"size=\(4, 4, 4\) is not allowed"),
    ({"crop": "middle"}, r"crop='middle' is not allowed: use None, 'center', a positive int"),
    ({"interpolation": "cubic"}, r"interpolation='cubic' is not allowed: use one of \['nearest'"),
    ({"max_classes": 1}, r"max_classes=1 must be an integer >= 2"),
])
def test_bad_arguments(rgb, kwargs, match):
    csv, image_dir, _ = rgb
    with pytest.raises(ValueError, match=match):
        ImageAttributeFolder(csv, image_dir, **kwargs)


def test_bad_transform_and_names_types(rgb):
    csv, image_dir, _ = rgb
    with pytest.raises(TypeError, match="transform=3 must be None or a callable"):
        ImageAttributeFolder(csv, image_dir, columns=["age"], transform=3, progress=False)
    with pytest.raises(TypeError, match=r"columns holds 3 \(int\); column names must be strings"):
        ImageAttributeFolder(csv, image_dir, columns=["age", 3])


def test_node_spec_bounds_errors(rgb):
    csv, image_dir, _ = rgb
    ds = ImageAttributeFolder(csv, image_dir, columns=["age", "sex"], size=4, progress=False)
    with pytest.raises(ValueError, match=r"bounds has column 'height', which is not an attribute"):
        ds.node_specs(bounds={"height": (0, 1)})
    with pytest.raises(ValueError, match=r"bounds\['sex'\]: column 'sex' is categorical, not continuous"):
        ds.node_specs(bounds={"sex": (0, 1)})
    with pytest.raises(ValueError, match=r"bounds\['age'\]=\(50\.0, 10\.0\) needs finite low < high"):
        ds.node_specs(bounds={"age": (50, 10)})
    with pytest.raises(ValueError, match=r"bounds\['age'\]=\(0\.0, 50\.0\) does not hold: column 'age' ranges over"):
        ds.node_specs(bounds={"age": (0, 50)})
    with pytest.raises(ValueError, match=r"bounds\['age'\]='x' must be a pair"):
        ds.node_specs(bounds={"age": "x"})
    with pytest.raises(ValueError, match="image='sex' clashes with the attribute column 'sex'"):
        ds.node_specs(image="sex")


# ---------------------------------------------------------------------------------------------- fake CelebA
CELEBA_ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
                ).split()
PARTITION = [0, 0, 0, 0, 1, 1, 2, 2, 2]
FACE_H, FACE_W = 24, 20  # the aligned faces are 218 x 178 (taller than wide); these are a small stand-in


def colour(k: int) -> tuple[int, int, int]:
    return (20 * k + 20, 230 - 20 * k, 60 + 10 * k)


def write_fake_celeba(root: Path, partition: list[int] = PARTITION) -> tuple[Path, np.ndarray]:
    """A CelebA folder in the original format: ``root/celeba/{five .txt files, img_align_celeba/*.jpg}``.

    Each face is one flat colour (``colour(k)``), so a row's pixels identify its file.
    """
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    n = len(partition)
    names = [f"{k + 1:06d}.jpg" for k in range(n)]
    signs = np.where(np.random.default_rng(7).random((n, len(CELEBA_ATTRS))) < 0.5, -1, 1)
    for k, name in enumerate(names):
        face = np.broadcast_to(np.array(colour(k), np.uint8), (FACE_H, FACE_W, 3)).copy()
        Image.fromarray(face).save(base / "img_align_celeba" / name, quality=95)
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in signs[k]) for k, name in enumerate(names)]
    (base / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(CELEBA_ATTRS) + " \n" + "\n".join(rows) + "\n")
    (base / "list_eval_partition.txt").write_text("".join(f"{nm} {p}\n" for nm, p in zip(names, partition)))
    (base / "identity_CelebA.txt").write_text("".join(f"{nm} {100 + k}\n" for k, nm in enumerate(names)))
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{nm}    95  71 226 313\n" for nm in names))
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x "
        "rightmouth_y\n" + "".join(f"{nm} 69 109 106 113 77 142 73 152 108 154\n" for nm in names))
    return base, signs


@pytest.fixture()
def celeba(tmp_path):
    base, signs = write_fake_celeba(tmp_path)
    return tmp_path, base, signs


@pytest.mark.parametrize("split, code", [("train", 0), ("valid", 1), ("test", 2), ("all", None)])
def test_celeba_splits_attributes_and_images(celeba, split, code):
    root, _, signs = celeba
    attrs = ("Smiling", "Male", "Eyeglasses")
    ds = CelebAAttributes(root, split=split, attributes=attrs, size=8, check_integrity=False, progress=False)
    rows = [k for k, p in enumerate(PARTITION) if code is None or p == code]
    assert len(ds) == len(rows) and ds.filenames == [f"{k + 1:06d}.jpg" for k in rows]
    assert ds.image_shape == (3, 8, 8)
    for name in attrs:
        expected = (signs[rows, CELEBA_ATTRS.index(name)] + 1) // 2
        assert ds.attributes[name].dtype == torch.int64 and ds.attributes[name].tolist() == expected.tolist()
    for i, k in enumerate(rows):
        x, item = ds[i]
        assert x.shape == (3, 8, 8) and set(item) == set(attrs)
        assert all(item[n] == ds.attributes[n][i] for n in attrs)
        torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(colour(k), dtype=torch.float32) / 127.5 - 1,
                                   rtol=0, atol=4 / 127.5)
    assert ds.node_specs(image="image") == {**{n: {"kind": "binary"} for n in attrs},
                                            "image": {"kind": "image", "shape": [3, 8, 8]}}
    assert ds.celeba.identity[:, 0].tolist() == [100 + k for k in rows]


def test_celeba_crop_channels_and_root_forms(celeba):
    root, base, _ = celeba
    ds = CelebAAttributes(base, split="all", attributes=["Young"], size=None, check_integrity=False, progress=False)
    assert ds.image_shape == (3, FACE_W, FACE_W)  # centred square of the taller-than-wide face
    grey = CelebAAttributes(root, split="valid", attributes=["Young"], size=(6, 4), crop=None, channels=1,
                            check_integrity=False, cache_in_memory=True, progress=False)
    assert grey.image_shape == (1, 6, 4) and grey[1][0].shape == (1, 6, 4)
    batch = grey.__getitems__([1, 0])
    torch.testing.assert_close(batch[0][0], grey[1][0])
    assert batch[1][1]["Young"] == grey.attributes["Young"][0]


def test_celeba_split_of_one_image(tmp_path):
    _, signs = write_fake_celeba(tmp_path, [0, 0, 0, 1, 2, 2])
    ds = CelebAAttributes(tmp_path, split="valid", attributes=["Male"], size=4, check_integrity=False,
                          progress=False)
    assert ds.filenames == ["000004.jpg"] and ds.attributes["Male"].tolist() == [(signs[3, 20] + 1) // 2]
    assert ds.celeba.identity[:, 0].tolist() == [103] and ds[0][0].shape == (3, 4, 4)
    assert CELEBA_ATTRS[20] == "Male"


def test_celeba_md5_check_refuses_a_non_original_folder(celeba):
    root, _, _ = celeba
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt' does not match torchvision's MD5 sum "
                                         r"75e246fa4810816ffd6ee81facbd244c.*check_integrity=False"):
        CelebAAttributes(root)


def test_celeba_missing_files_say_where_to_put_them(tmp_path, celeba):
    with pytest.raises(DataNotFoundError, match=r"CelebA folder '.*nowhere' does not exist; put the CelebA files "
                                                r".*celeba/' holding \['list_attr_celeba\.txt'.*never downloads"):
        CelebAAttributes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no 'celeba/list_attr_celeba\.txt'.*put the CelebA files"):
        CelebAAttributes(tmp_path / "empty")
    root, base, _ = celeba
    (base / "identity_CelebA.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"CelebA folder '.*celeba' lacks \['identity_CelebA\.txt'\]"):
        CelebAAttributes(root, check_integrity=False)


def test_celeba_missing_image_folder_and_image(celeba):
    root, base, _ = celeba
    (base / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DataNotFoundError, match=r"1 image\(s\) of split='train' .* missing from .*img_align_celeba"
                                                r"', e\.g\. \['000002\.jpg'\]"):
        CelebAAttributes(root, check_integrity=False)
    # the other splits do not need that file
    assert len(CelebAAttributes(root, split="test", check_integrity=False, progress=False)) == 3
    for path in (base / "img_align_celeba").iterdir():
        path.unlink()
    (base / "img_align_celeba").rmdir()
    with pytest.raises(DataNotFoundError, match=r"lacks \['img_align_celeba/'\]"):
        CelebAAttributes(root, check_integrity=False)


def test_celeba_unreadable_image_names_the_file(celeba):
    root, base, _ = celeba
    (base / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    ds = CelebAAttributes(root, check_integrity=False, progress=False)
    with pytest.raises(ValueError, match=r"CelebA train row 2 \(000003\.jpg\): cannot read image"):
        ds[2]


def test_celeba_argument_and_annotation_errors(celeba):
    root, base, _ = celeba
    with pytest.raises(ValueError, match=r"attribute 'smiling' is not a CelebA attribute \(did you mean 'Smiling'"):
        CelebAAttributes(root, attributes=["smiling"], check_integrity=False)
    with pytest.raises(ValueError, match=r"split='validation' is not allowed: use 'train', 'valid', 'test' or 'all'"):
        CelebAAttributes(root, split="validation")
    with pytest.raises(ValueError, match="attributes is empty"):
        CelebAAttributes(root, attributes=())
    with pytest.raises(ValueError, match=r"channels=4 is not allowed"):
        CelebAAttributes(root, channels=4)
    text = (base / "list_eval_partition.txt").read_text().replace(" 2\n", " 0\n")
    (base / "list_eval_partition.txt").write_text(text)
    with pytest.raises(ValueError, match=r"split='test' of .* has no images"):
        CelebAAttributes(root, split="test", check_integrity=False)
    lines = (base / "list_attr_celeba.txt").read_text().splitlines()
    lines[3] = lines[3] + " 1"  # one row with 41 values
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"cannot parse the CelebA annotation files in .*celeba"):
        CelebAAttributes(root, check_integrity=False)
