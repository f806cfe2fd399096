"""Does every TensorRT API the engine build script (`export/tensorrt.py`) uses exist in a real `tensorrt` module?

The script runs only on the device, so a renamed method or enum (TensorRT 11 removed `BuilderFlag.INT8` and
`FP16`) would first show there. `uses()` reads the script's source and lists each TensorRT name it touches:
module attributes (`trt.Builder`), their members (`trt.Logger.WARNING`), and the methods, properties and keyword
arguments used on the objects the build creates, typed by `OBJECTS`. `check(trt)` looks each one up in a real
module: attributes with `hasattr`, keyword arguments in pybind11's signature docstrings. Nothing is called, so
no GPU is needed, only the bindings (`scripts/check-tensorrt-api` installs them from PyPI into a scratch folder).

    python -m edgeppt.export.tensorrt_api        # with tensorrt importable: one line per name, exit 1 if any missing
"""

from __future__ import annotations

import ast
import inspect
import sys
from types import ModuleType
from typing import NamedTuple

from . import tensorrt as build_script

# The TensorRT class of each local name in the build script that holds a TensorRT object, and of what the methods
# it calls on them return. A local assigned from TensorRT that is in neither table (nor in PLAIN) fails `uses()`,
# so the tables cannot fall behind the script.
OBJECTS = {"logger": "Logger", "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
           "config": "IBuilderConfig", "cache": "ITimingCache", "inp": "ITensor", "profile": "IOptimizationProfile",
           "engine": "IHostMemory"}
RETURNS = {("IBuilderConfig", "get_timing_cache"): "ITimingCache"}
PLAIN = {"flags", "errors", "dims", "strongly_typed"}  # locals built from TensorRT values: plain Python


class Use(NamedTuple):
    owner: str  # "" for the module itself, else a TensorRT class name
    name: str
    keyword: str | None = None  # a keyword argument of the method `name`

    def __str__(self) -> str:
        where = f"trt.{self.owner}.{self.name}" if self.owner else f"trt.{self.name}"
        return f"{where}({self.keyword}=...)" if self.keyword else where


def _owner(node: ast.expr) -> str | None:
    """The TensorRT class (or "" for the module) that `node` evaluates to, if the tables know it."""
    if isinstance(node, ast.Name):
        return "" if node.id == "trt" else OBJECTS.get(node.id)
    if isinstance(node, ast.Attribute) and _owner(node.value) == "":
        return node.attr  # trt.Logger, trt.NetworkDefinitionCreationFlag: classes of the module
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = _owner(node.func.value)
        return RETURNS.get((owner, node.func.attr)) if owner else None
    return None


def _imports_trt(f: ast.FunctionDef) -> bool:
    """The functions that use TensorRT are those that import it (the script imports it lazily)."""
    return any(isinstance(n, ast.Import) and any(a.name == "tensorrt" and a.asname == "trt" for a in n.names)
               for n in ast.walk(f))


def _touches_trt(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and (n.id == "trt" or n.id in OBJECTS) for n in ast.walk(node))


def uses(source: str | None = None) -> list[Use]:
    """Every TensorRT name used by the build script's functions that import TensorRT, sorted."""
    tree = ast.parse(source if source is not None else inspect.getsource(build_script))
    found: dict[Use, None] = {}
    for node in (n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and _imports_trt(f)
                 for n in ast.walk(f)):
        if isinstance(node, ast.Assign) and _touches_trt(node.value):
            for target in node.targets:
                for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                    if name not in OBJECTS and name not in PLAIN and name != "trt":
                        raise ValueError(f"tensorrt_api: the build script assigns {name!r} from TensorRT; add it "
                                         "to OBJECTS (its TensorRT class) or PLAIN")
        if isinstance(node, ast.Attribute):
            owner = _owner(node.value)
            if owner is not None and not (owner == "" and node.attr == "__version__"):
                found[Use(owner, node.attr)] = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.keywords:
            owner = _owner(node.func.value)
            if owner:
                for kw in node.keywords:
                    if kw.arg:
                        found[Use(owner, node.func.attr, kw.arg)] = None
    return sorted(found, key=str)


def check(trt: ModuleType, wanted: list[Use] | None = None) -> list[tuple[Use, bool]]:
    """(use, present in `trt`) for each use."""
    out = []
    for use in wanted if wanted is not None else uses():
        owner = getattr(trt, use.owner, None) if use.owner else trt
        ok = owner is not None and hasattr(owner, use.name)
        if ok and use.keyword:  # pybind11 writes each overload's signature into the docstring
            doc = getattr(getattr(owner, use.name), "__doc__", "") or ""
            ok = f"{use.keyword}:" in doc
        out.append((use, ok))
    return out


def main() -> int:
    try:
        import tensorrt as trt
    except ImportError as e:
        print(f"cannot check: TensorRT's Python bindings do not import ({e}); scripts/check-tensorrt-api installs "
              "them", file=sys.stderr)
        return 2
    results = check(trt)
    for use, ok in results:
        print(f"{'ok     ' if ok else 'MISSING'} {use}")
    missing = sum(not ok for _, ok in results)
    print(f"TensorRT {trt.__version__}: {len(results) - missing} of {len(results)} names the build script uses "
          f"exist{'' if not missing else f'; {missing} missing'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
