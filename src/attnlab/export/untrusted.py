"""Untrusted ``.pt2`` archives: ``torch.export.load`` runs Python from an archive in four places
(pickled payloads, shape guards, symbolic-shape strings given to ``sympy.sympify``, and node
targets resolved by name). :func:`check_archive` reads the members without running any of them and
refuses (:class:`attnlab.errors.DataError`) an archive that holds such code unless it is trusted.
Pickled payloads that torch's weights-only unpickler accepts (tensors, and torchao's int8 tensors,
which torchao registers as safe) pass."""

from __future__ import annotations

import ast
import io
import json
import re
import warnings
import zipfile
from collections.abc import Collection, Iterator
from pathlib import Path

import torch
from torch.export.pt2_archive import constants as pt2

from attnlab.errors import DataError


def archive_members(z: zipfile.ZipFile) -> dict[str, str]:
    """A ``.pt2`` archive's member names inside its top folder -> the zip member names (torch
    reads only the members under the first member's top folder)."""
    names = z.namelist()
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else None
    return {n[len(prefix):]: n for n in names if prefix and n.startswith(prefix)}



def check_archive(z: zipfile.ZipFile, path: Path, trusted: bool) -> None:
    """Refuse (:class:`DataError`) a zip that is not a ``torch.export`` archive and, unless
    ``trusted``, one holding code; reads the members, runs nothing."""
    names = archive_members(z)
    models = [n for n in names if n.startswith(pt2.MODELS_DIR) and n.endswith(".json")]
    if pt2.ARCHIVE_VERSION_PATH not in names or not models:
        raise DataError(f"{path} is not a torch.export program (.pt2): it lacks the archive's "
                        f"{pt2.ARCHIVE_VERSION_PATH} or {pt2.MODELS_DIR}*.json")
    if trusted:
        return
    try:
        reason = _code_in_archive(z, names, models)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise DataError(f"{path} is not a torch.export program (.pt2): its layout is damaged or unknown") from None
    if reason:
        raise DataError(f"{path} is not trusted: it {reason}; nothing in it was run "
                        "(trusted=True loads it: only for a file you would run as code)")


def _code_in_archive(z: zipfile.ZipFile, names: dict[str, str], models: list[str]) -> str | None:
    """What in the archive would run Python when loaded or called, or None: compiled code, pickles
    that torch's weights-only unpickler refuses, or code in the programs' JSON."""
    if len(names) != len(z.namelist()):
        return "has members outside its top folder or twice"
    if any(n.startswith((pt2.AOTINDUCTOR_DIR, pt2.EXECUTORCH_DIR)) for n in names):
        return "holds compiled code (AOTInductor)"
    for m in models:
        model = m[len(pt2.MODELS_DIR):-len(".json")]
        if f"{pt2.WEIGHTS_DIR}{model}.pt" in names or f"{pt2.CONSTANTS_DIR}{model}.pt" in names:
            return "pickles its weights (an old .pt2 layout)"
        for config, folder in ((pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.WEIGHTS_DIR),
                               (pt2.CONSTANTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_DIR)):
            for payload in json.loads(z.read(names[config.format(model)]))["config"].values():
                member = folder + payload["path_name"]
                if folder == pt2.CONSTANTS_DIR and not payload["path_name"].startswith(pt2.TENSOR_CONSTANT_FILENAME_PREFIX):
                    return f"pickles a Python object ({member})"
                if payload["use_pickle"] and not _weights_only(z.read(names[member])):
                    return f"pickles Python objects besides tensors ({member})"
        sample = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        if sample in names and z.getinfo(names[sample]).file_size and not _weights_only(z.read(names[sample])):
            return f"pickles Python objects besides tensors ({sample})"
        reason = _code_in_program(json.loads(z.read(names[m])))
        if reason:
            return reason
    return None


def _weights_only(data: bytes) -> bool:
    """Whether torch's weights-only unpickler (which calls nothing but an allowlist) accepts
    ``data``: tensors, plain containers and classes registered as safe (torchao's int8 tensors)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal or damage: not plain tensors
        return False
    return True


# The callables of symbolic shapes a program may name besides operator overloads.
_SYM_FUNCTION = re.compile(r"_operator\.(add|sub|mul|truediv|floordiv|mod|pow|neg|pos|eq|ne|lt|le|gt|ge|and_|or_|not_|"
                           r"getitem)|math\.(trunc|floor|ceil)|torch\._?sym_[a-z_]+")
_SYMBOL = re.compile(r"[a-z]+[0-9]+")  # torch's shape symbols: s0, s11, u3
_SHAPE_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_SHAPE_MODULES = {"torch": re.compile(r"_?sym_[a-z_]+"), "math": re.compile(r"floor|ceil|trunc|sqrt|log2")}
_SYMPY_CLASSES = frozenset({"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Abs", "Eq", "Ne", "Lt", "Le",
                            "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
                            "Unequality", "And", "Or", "Not", "floor", "ceiling", "Piecewise", "ExprCondPair", "oo",
                            "true", "false"})


def _code_in_program(program: dict) -> str | None:
    """What in a serialized ExportedProgram would run as Python, or None. torch executes its shape
    guards as code, evaluates its symbolic shapes with ``sympy.sympify`` and resolves its node
    targets by name; each must be a plain shape expression or a registered operator."""
    for guard in program.get("guards_code") or ():
        if not isinstance(guard, str) or not _plain_expression(guard, ()):
            return f"has a shape guard that is not a plain comparison ({str(guard)[:60]!r})"
    sympy_names = _SYMPY_CLASSES | _torch_sympy_functions()
    for key, value in _strings(program):
        if key in ("target", "as_operator") and not _is_operator(value):
            return f"calls {value[:60]!r}, which is not a tensor operator"
        if key == "expr_str" and not _plain_expression(value, sympy_names):
            return f"has a symbolic shape that is not a plain expression ({value[:60]!r})"
    return None


def _strings(obj, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    """(key, value) of every string in nested JSON (a list's items under the list's key)."""
    if isinstance(obj, str):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)


def _torch_sympy_functions() -> frozenset[str]:
    import sympy
    from torch.utils._sympy import functions

    return frozenset(n for n, v in vars(functions).items()
                     if isinstance(v, type) and issubclass(v, sympy.Basic) and v.__module__ == functions.__name__)


def _is_operator(target: str) -> bool:
    """Whether a node target names a registered operator overload (``torch.ops.<ns>.<op>.<overload>``)
    or an arithmetic function of symbolic shapes; resolved with getattr only, nothing called."""
    if _SYM_FUNCTION.fullmatch(target):
        return True
    parts = target.split(".")
    if len(parts) != 5 or parts[:2] != ["torch", "ops"]:
        return False
    op = torch.ops
    for part in parts[2:]:
        op = getattr(op, part, None)
    return isinstance(op, torch._ops.OpOverload)


_PLAIN_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Subscript, ast.keyword, ast.boolop,
                ast.operator, ast.unaryop, ast.cmpop, ast.expr_context)


def _plain_expression(text: str, functions: Collection[str]) -> bool:
    """Whether ``text`` is a Python expression that only computes: numbers, identifier strings,
    arithmetic, comparisons, shape symbols, ``L[...]`` subscripts, ``.size()``-like methods,
    ``torch.sym_max``-like and ``math.floor``-like functions, and calls of ``functions`` by name.
    No other name, attribute or call, so evaluating it reaches no other code."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):  # "torch", "math": only through the attributes allowed below
            ok = node.id in functions or node.id in ("L", "inf", *_SHAPE_MODULES) or bool(_SYMBOL.fullmatch(node.id))
        elif isinstance(node, ast.Attribute):
            module = node.value.id if isinstance(node.value, ast.Name) else None
            ok = node.attr in _SHAPE_METHODS or bool(module in _SHAPE_MODULES and _SHAPE_MODULES[module].fullmatch(node.attr))
        elif isinstance(node, ast.Constant):
            ok = isinstance(node.value, (int, float)) or (isinstance(node.value, str) and node.value.isidentifier())
        elif isinstance(node, ast.Call):  # an attribute called is checked as an attribute
            ok = isinstance(node.func, ast.Attribute) or (isinstance(node.func, ast.Name) and node.func.id in functions)
        else:
            ok = isinstance(node, _PLAIN_NODES)
        if not ok:
            return False
    return True
