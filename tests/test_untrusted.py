"""Untrusted files: nothing in the project can execute code hidden in a file it loads.

* A scan of the sources (``dcfg_io/``, ``scm/``, ``diffusion/``, ``pipeline/``, ``examples/``) with :mod:`ast`
  finds no pickle (``import pickle``, ``pickle.*``, ``read_pickle``), no ``torch.load`` without
  ``weights_only=True``, no ``np.load(..., allow_pickle=True)``, no ``yaml.load`` without a safe loader, and no
  ``eval(`` / ``exec(`` builtin (``model.eval()`` is a method call and is not flagged). The scanner itself is
  tested on snippets.
* Saved models hold JSON and safetensors only, and load with every unpickler disabled.
"""
from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import pytest
import torch
from hardening_helpers import query_batch, small_pipeline

from pipeline.core import CounterfactualPipeline

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("dcfg_io", "scm", "diffusion", "pipeline", "examples")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for the call target ``torch.load``; '' when it is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(source: str, filename: str = "<snippet>") -> list[str]:
    """Every use of an unpickler or of ``eval``/``exec`` in ``source``, as ``file:line: what``."""
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                flag(node, f"from {node.module} import ...")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                flag(node, "from torch import load")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in UNSAFE_MODULES:
            flag(node, f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                flag(node, f"{name}(...)")
            elif name == "__import__":
                flag(node, "__import__(...)")
            elif name in ("torch.load", "torch.serialization.load") and not _is_true(_keyword(node, "weights_only")):
                flag(node, f"{name}(...) without weights_only=True")
            elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not None \
                    and not (isinstance(_keyword(node, "allow_pickle"), ast.Constant)
                             and _keyword(node, "allow_pickle").value is False):
                flag(node, f"{name}(..., allow_pickle=...)")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                loader = _keyword(node, "Loader")
                if loader is None and len(node.args) > 1:
                    loader = node.args[1]
                if name in ("yaml.unsafe_load", "yaml.full_load") or not _dotted(loader or ast.Name("x")) \
                        .endswith("SafeLoader"):
                    flag(node, f"{name}(...) without a SafeLoader")
            elif last == "read_pickle":
                flag(node, f"{name}(...)")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import pickle as pk",
    "from pickle import loads",
    "import dill",
    "x = pickle.loads(b)",
    "import torch\nstate = torch.load(path)",
    "import torch\nstate = torch.load(path, weights_only=False)",
    "import torch\nstate = torch.load(path, map_location='cpu')",
    "from torch import load",
    "import numpy as np\na = np.load(path, allow_pickle=True)",
    "import yaml\ncfg = yaml.load(text)",
    "import yaml\ncfg = yaml.load(text, Loader=yaml.Loader)",
    "import yaml\ncfg = yaml.unsafe_load(text)",
    "value = eval(user_text)",
    "exec(code)",
    "m = __import__('pickle')",
    "import pandas as pd\ndf = pd.read_pickle(path)",
])
def test_the_scanner_flags_unsafe_code(snippet):
    assert unsafe_uses(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()",
    "net = self.image_model.eval()",
    "import torch\nstate = torch.load(path, weights_only=True)",
    "import torch\nstate = torch.load(path, map_location='cpu', weights_only=True)",
    "import numpy as np\na = np.load(path)",
    "import numpy as np\na = np.load(path, allow_pickle=False)",
    "import yaml\ncfg = yaml.safe_load(text)",
    "import yaml\ncfg = yaml.load(text, Loader=yaml.SafeLoader)",
    "import json\ncfg = json.loads(text)",
    "from safetensors.torch import load_file\nw = load_file(path)",
    "s = 'pickle is never used here'  # nor pickle.loads",
])
def test_the_scanner_passes_safe_code(snippet):
    assert unsafe_uses(snippet) == [], snippet


def test_no_source_file_unpickles_or_evaluates():
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 30  # the scan found the sources
    found = [hit for f in files for hit in unsafe_uses(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == [], "unsafe loading or evaluation in the sources:\n" + "\n".join(found)


def test_bundled_model_is_json_and_safetensors_only():
    files = [p for p in (ROOT / "pipeline" / "pretrained").rglob("*") if p.is_file()]
    assert files
    # JSON, safetensors and the model card (README.md), which no loader reads
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}, sorted(map(str, files))


# ------------------------------------------------------------------------------------- a saved pipeline directory
@pytest.fixture(scope="module")
def pipe() -> CounterfactualPipeline:
    return small_pipeline()


def _forbidden(*args, **kwargs):
    raise AssertionError("something unpickled while loading a saved pipeline")


def test_saved_pipeline_loads_without_any_unpickler(pipe, tmp_path, monkeypatch):
    path = pipe.save(tmp_path / "pipe")
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".json", ".safetensors", ".md"}, sorted(map(str, files))  # .md: the card
    for f in files:
        head = f.read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # torch.save zip / pickle
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, _forbidden)
    monkeypatch.setattr(pickle, "Unpickler", _forbidden)
    monkeypatch.setattr(torch, "load", _forbidden)
    back = CounterfactualPipeline.load(path)
    assert back.classifier is not None
    x, parents = query_batch()
    a = pipe.counterfactual(x, parents, do={"d": 1}, steps=2, seed=0)
    b = back.counterfactual(x, parents, do={"d": 1}, steps=2, seed=0)
    assert torch.equal(a.image, b.image) and all(torch.equal(a.parents[k], b.parents[k]) for k in a.parents)
    digits = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1  # its input size
    torch.testing.assert_close(back.classifier(digits), pipe.classifier(digits), rtol=0, atol=0)


def test_a_pickle_file_is_never_read(pipe, tmp_path):
    """A pipeline whose weights were swapped for a pickle is refused; the pickle's payload never runs."""
    path = pipe.save(tmp_path / "pipe")

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "pwned", "ran"))

    buf = io.BytesIO()
    pickle.dump({"weights": Payload()}, buf)
    for weights in (path / "image_model" / "model.safetensors", path / "scm" / "scm.safetensors",
                    path / "classifier" / "model.safetensors"):
        original = weights.read_bytes()
        weights.write_bytes(buf.getvalue())
        with pytest.raises(ValueError, match="safetensors"):
            CounterfactualPipeline.load(path)
        weights.write_bytes(original)
    assert not (tmp_path / "pwned").exists()
    CounterfactualPipeline.load(path)  # intact again


def test_saved_bytes_are_the_same_in_every_process(tmp_path):
    """The same pipeline saved by two processes has the same bytes (safetensors headers in a canonical order), so
    its sha256 is a function of its content."""
    import os
    import subprocess
    import sys

    script = ("import sys, torch; sys.path.insert(0, 'tests'); from hardening_helpers import small_pipeline; "
              "small_pipeline().save(sys.argv[1])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    from pipeline.generate import pipeline_sha256

    assert pipeline_sha256(tmp_path / "a") == pipeline_sha256(tmp_path / "b")
