"""Models from the user's own code: `model = "package.module:factory"`.

The factory is called as `factory(input_shape, num_classes, **model_options)`, with
input_shape = (C, H, W) of the data set and model_options the spec's free-form table,
and must return a `torch.nn.Module` mapping float (N, C, H, W) to logits (N, num_classes).

The spec's `code` lists the files and packages that hold it (resolved against the spec
file when it loads); each one's folder goes on `sys.path`, so `mynets.py` is module
`mynets` and the folder `mypkg/` package `mypkg`, here and in the image, where
`runner build` copies them (backends/image.py). A module already importable (on
PYTHONPATH, installed) needs no `code`.

Every failure (bad reference, missing file, import error, a factory that raises or
returns something else, a model that cannot take the data) is a one-line UserError.
No torch at import: the spec validates reference syntax through this module.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from torch import nn

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
REF_RE = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")


def is_user_model(name: str) -> bool:
    """A `module:factory` reference (built-in and torchvision names have no ':')."""
    return ":" in name


def check_ref(name: str) -> str:
    """`name` if it is a well-formed `package.module:factory`; ValueError otherwise."""
    if not REF_RE.fullmatch(name):
        raise ValueError(
            f'\'{name}\' is not a model reference: write "package.module:factory" (e.g. "mynets:small_cnn"), '
            "Python names separated by dots, one ':' before the function"
        )
    return name


def resolve_code(entries: Sequence[str], base: Path, source: str) -> list[str]:
    """`entries` (paths relative to `base`, the spec's folder, or absolute) as absolute paths.

    Raises UserError for an entry that does not exist, is not a .py file or a folder, or
    whose name another entry, runner or the standard library already takes: each becomes
    a module name.
    """
    resolved, names = [], {"runner": "runner itself"}
    for entry in entries:
        path = (base / entry).resolve()
        where = f"{source}: code: '{entry}'"
        if not path.exists():
            raise UserError(f"{where}: no such file or folder ({path}); paths are relative to the spec's folder")
        if not (path.is_dir() or path.suffix == ".py"):
            raise UserError(f"{where}: not a .py file or a package folder; list the modules your model needs")
        name = path.stem if path.is_file() else path.name
        if name in sys.stdlib_module_names:  # already imported, most of them: Python would not see yours
            raise UserError(f"{where}: '{name}' is a module of Python's standard library; rename yours")
        if name in names:
            raise UserError(f"{where}: module name '{name}' is taken by {names[name]}; rename one of them")
        names[name] = f"'{entry}'"
        resolved.append(str(path))
    return resolved


def code_files(code: Sequence[str]) -> dict[str, bytes]:
    """Every file of `code` (absolute paths: .py files and package folders, caches left out)
    by its path from the entry's folder: `mynets.py`, `mypkg/__init__.py`, .... Laid out so
    under any folder, that folder on sys.path imports them as here (an image, a notebook)."""
    files: dict[str, bytes] = {}
    for entry in map(Path, code):
        inside = sorted(f for f in entry.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        for file in inside if entry.is_dir() else [entry]:
            files[file.relative_to(entry.parent).as_posix()] = file.read_bytes()
    return files


def code_roots(code: Sequence[str]) -> list[str]:
    """The folders to put on sys.path for `code` (absolute paths): each entry's parent, once."""
    return list(dict.fromkeys(str(Path(entry).parent) for entry in code))


def build_user_model(
    ref: str, options: dict[str, Any], in_shape: tuple[int, int, int], num_classes: int, code: Sequence[str] = ()
) -> nn.Module:
    """Import `ref`'s module (with `code` on sys.path; entries missing here are skipped: the
    module may be importable anyway), call the factory, check what it returns."""
    present = [c for c in code if Path(c).exists()]
    roots = code_roots(present)
    for root in reversed(roots):
        if root not in sys.path:
            sys.path.insert(0, root)  # ahead of site-packages, as PYTHONPATH would be
    factory = _factory(ref, roots, [c for c in code if c not in present])
    import torch  # after the import of the user's module: a missing one fails without waiting for torch
    from torch import nn

    call = f"{ref}(input_shape={in_shape}, num_classes={num_classes}, **model_options)"
    try:
        model = factory(in_shape, num_classes, **options)
    except Exception as e:
        # Options the factory does not take: the key to fix is model_options, not model.
        hint = "; check [model_options] against its parameters" if isinstance(e, TypeError) and options else ""
        raise UserError(f"model: {call} raised {_why(e, roots, factory)}{hint}") from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model: {ref} returned {type(model).__module__}.{type(model).__qualname__}, not a torch.nn.Module"
        )
    # Fail now, with the reason, rather than at the first step or at load time elsewhere.
    # Eval mode and a forked RNG: the check draws nothing and leaves batch-norm statistics alone.
    modes = {m: m.training for m in model.modules()}  # restored as made: a frozen part stays in eval
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(torch.zeros(2, *in_shape))
    except Exception as e:
        raise UserError(
            f"model: {ref}'s model cannot take inputs of shape {(2, *in_shape)}: {_why(e, roots, factory)}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UserError(
            f"model: {ref}'s model returned {got} for inputs of shape {(2, *in_shape)}; "
            f"it must return logits of shape (2, {num_classes}), one per class"
        )
    for module, mode in modes.items():
        module.training = mode
    return model


def _factory(ref: str, roots: Sequence[str], missing: Sequence[str]) -> Any:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UserError(f"model: importing '{module_name}' failed: {_why(e, roots, None)}") from None
        hint = (
            f"the run's code ({', '.join(missing)}) is not on this machine: put its folder on PYTHONPATH"
            if missing
            else "list its file or package in the spec's code = [...] (relative to the spec), or put its folder on PYTHONPATH"
        )
        raise UserError(f"model: no module named '{e.name}' (of {ref}); {hint}") from None
    except Exception as e:  # SyntaxError, or whatever the module raises as it runs
        raise UserError(f"model: importing '{module_name}' failed: {_why(e, roots, None)}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserError(
            f"model: module '{module_name}' has no '{attr}'; it has: {', '.join(public) or 'nothing callable'}"
        )
    if not callable(factory):
        raise UserError(
            f"model: {ref} is not callable (it is {type(factory).__name__}); name a function returning a torch.nn.Module"
        )
    return factory


def _why(error: BaseException, roots: Sequence[str], factory: Any) -> str:
    """'Type: message (file, line N)': the first line of the message, and the innermost frame
    in the user's code (a file under `roots` or the factory's module), if any."""
    message = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    if isinstance(error, SyntaxError) and error.filename:  # its str() carries the place already
        return f"{type(error).__name__}: {error.msg} ({error.filename}, line {error.lineno})"
    home = [*roots]
    module_file = getattr(sys.modules.get(getattr(factory, "__module__", "") or ""), "__file__", None)
    if module_file:
        home.append(str(Path(module_file).parent))
    mine = [f for f in frames if any(f.filename.startswith(h) for h in home)]
    return f"{text} ({mine[-1].filename}, line {mine[-1].lineno})" if mine else text
