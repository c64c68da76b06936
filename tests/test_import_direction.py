"""The packages' import rules, read from the source of every module (``ast``; nothing is imported).

* ``scm`` and ``diffusion`` never import each other or ``pipeline``; ``dcfg_io`` imports none of the three.
* No module of the four packages imports a private name of another module (``from x import _y``, at module level
  or inside a function) or a private module (``import x._y``, ``from x._y import z``, ``from x import _y``) of the
  project, its own package included: what one module needs from another is that module's public API.
* In ``scm``, ``diffusion`` and ``dcfg_io`` the same holds for third-party packages; ``pipeline`` may reach into a
  third-party library's private module where it documents why (the fast skeleton of ``pipeline.morphometry``).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dcfg_io", "scm", "diffusion", "pipeline")
#: the project packages each package must not import
FORBIDDEN = {"scm": {"diffusion", "pipeline"}, "diffusion": {"scm", "pipeline"},
             "dcfg_io": {"scm", "diffusion", "pipeline"}}
#: packages whose third-party imports are checked too
STRICT = ("dcfg_io", "scm", "diffusion")


@dataclass(frozen=True)
class Imported:
    """One imported module or name, as written at ``where``."""

    where: str
    module: str            # the absolute module imported from (``a.b`` of ``from a.b import c``, or ``a.b``)
    name: str | None       # ``c`` of ``from a.b import c``; None for ``import a.b``


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, root: Path) -> list[Imported]:
    """Every import statement of the file, at any depth (functions, classes, ``if TYPE_CHECKING``)."""
    module, is_package = _module_name(path, root), path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [Imported(where, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            found += [Imported(where, source, alias.name) for alias in node.names]
    return found


def _modules(package: str, root: Path) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def _is_module(dotted: str, root: Path) -> bool:
    """Whether ``dotted`` names a module or package under ``root``."""
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _top(dotted: str) -> str:
    return dotted.split(".")[0]


def _private_parts(dotted: str) -> bool:
    """Whether a module path goes through a private module (``x._y``, ``x._y.z``)."""
    return any(p.startswith("_") and not p.startswith("__") for p in dotted.split(".")[1:])


def _violations(package: str, root: Path = ROOT) -> list[str]:
    """One line per import of ``package`` (a folder of ``root``) that breaks the rules of the module docstring."""
    bad = []
    for path in _modules(package, root):
        own = _module_name(path, root)
        for imp in _imports(path, root):
            target = imp.module if imp.name is None else f"{imp.module}.{imp.name}"
            top = _top(imp.module)
            if top in FORBIDDEN.get(package, ()):
                bad.append(f"{imp.where}: {package} imports {target} ({top} is off limits to {package})")
                continue
            if top not in PACKAGES and package not in STRICT:
                continue                  # pipeline's third-party imports are not this test's business
            if _private_parts(imp.module):
                bad.append(f"{imp.where}: imports the private module {imp.module}")
            elif imp.name and imp.name.startswith("_") and not imp.name.startswith("__") and imp.module != own:
                kind = "a private module" if _is_module(target, root) else "a private name of another module"
                bad.append(f"{imp.where}: from {imp.module} import {imp.name} ({kind})")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_import_rules(package: str) -> None:
    assert _modules(package, ROOT), f"no modules found under {package}/"
    assert _violations(package) == []


def test_the_checker_sees_violations(tmp_path) -> None:
    """The rules above fire on a planted package (so that an empty list means something)."""
    pkg = tmp_path / "scm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _helper():\n    pass\n")
    (pkg / "b.py").write_text(
        "import pipeline.core\n"
        "from diffusion import model\n"
        "from .a import _helper\n"
        "def f():\n"
        "    from dcfg_io._hidden import thing\n"
        "    from scm.a import _helper as h\n")
    (tmp_path / "diffusion").mkdir()
    (tmp_path / "diffusion" / "__init__.py").write_text("")
    (tmp_path / "diffusion" / "_private.py").write_text("")
    (tmp_path / "diffusion" / "user.py").write_text("from diffusion import _private\n"
                                                    "from diffusion._private import x\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "a.py").write_text("from pipeline.b import _helper\n"
                                               "from skimage.morphology._skeletonize_various_cy import y\n")
    found = _violations("scm", tmp_path)
    own = _violations("diffusion", tmp_path)  # its own private submodule is private too
    assert len(own) == 2 and all("_private" in line for line in own)
    inside = _violations("pipeline", tmp_path)  # pipeline's own private names; third-party ones pass
    assert len(inside) == 1 and "from pipeline.b import _helper" in inside[0]
    text = "\n".join(found)
    assert "imports pipeline.core" in text and "imports diffusion.model" in text
    assert text.count("import _helper") == 2
    assert "private module dcfg_io._hidden" in text
    assert len(found) == 5
