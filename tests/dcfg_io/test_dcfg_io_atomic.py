"""dcfg_io's atomic writers: the old file or the new one, never a half-written one or a stray temporary (the
package's docstring examples run under ``--doctest-modules``)."""
from __future__ import annotations

import os
import stat

import pytest

from dcfg_io.atomic import atomic_write, atomic_write_bytes, atomic_write_json, usual_mode


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("error", [RuntimeError("the writer failed"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")

    def write(tmp) -> None:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.") and tmp.suffix == ".png"
        tmp.write_bytes(b"half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and _entries(tmp_path) == ["plot.png"]


def test_bytes_writer_cleans_up_when_the_data_cannot_be_written(tmp_path) -> None:
    target = tmp_path / "sub" / "data.bin"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert _entries(tmp_path / "sub") == []


def test_writes_replace_the_file_with_the_usual_permissions(tmp_path) -> None:
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n' and _entries(tmp_path) == ["result.json"]
    assert stat.S_IMODE(os.stat(target).st_mode) == usual_mode()
    out = atomic_write(tmp_path / "notes.txt", lambda tmp: tmp.write_text("x"))
    assert out.read_text() == "x" and stat.S_IMODE(os.stat(out).st_mode) == usual_mode()
