"""The CLI's --parents / --do texts and output-path checks."""
import pytest
import torch

from pipeline.parsing import check_writable, parse_assignments, parse_do


def test_assignments_keep_ints_and_floats():
    assert parse_assignments("thickness=2.1, intensity=180,digit=3") == {
        "thickness": 2.1, "intensity": 180, "digit": 3}


def test_do_constants_and_shifts():
    do = parse_do("thickness=+1,intensity-=20.5,digit=4,x=-0.5,y+=2")
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(do["thickness"](t), t + 1)
    assert torch.equal(do["intensity"](t), t - 20.5)
    assert torch.equal(do["y"](t), t + 2)
    assert do["digit"] == 4 and do["x"] == -0.5


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("thickness", "cannot parse"),
    ("thickness=", "cannot parse"),
    ("thickness=abc", "not a number"),
    ("thickness=nan", "finite"),
    ("thickness=inf", "finite"),
    ("thickness=1,,digit=2", "empty item"),
    ("thickness=1,thickness=2", "given twice"),
    ("=3", "cannot parse"),
    ("thick ness=3", "not a valid node name"),
])
def test_bad_parents_text(text, match):
    with pytest.raises(ValueError, match=match):
        parse_assignments(text)


def test_shift_not_allowed_in_parents():
    with pytest.raises(ValueError, match="shift"):
        parse_assignments("thickness+=1")


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "x.png") == tmp_path / "new" / "deeper" / "x.png"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a writable directory"):
        check_writable(f / "x.png")
