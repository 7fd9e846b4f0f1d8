"""Load a user's `TrainingSetup` from `FILE.py:FUNC` or `package.module:FUNC`.

The file's directory goes first on `sys.path` (as pytest does for test files), so the user's
`doctor_setup.py` imports its own `src/` package. Everything that can go wrong is a `SetupError`
naming the user's file (and line, where there is one): the CLI prints it as one line.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quad_doctor.trainer.errors import SetupError
from quad_doctor.trainer.setup import TrainingSetup

# quad-doctor's own source folders (an editable install maps them into `quad_doctor`); a user file
# anywhere else, even inside this repository (examples/), is the user's.
PACKAGE_FOLDERS = tuple(
    Path(importlib.util.find_spec(name).origin).resolve().parent
    for name in ("quad_doctor", "quad_doctor.trainer", "quad_doctor.checks", "quad_doctor.reports")
)


def load_setup(spec: str) -> TrainingSetup:
    """Call the function `spec` names and return the `TrainingSetup` it builds."""
    module_part, _, function_name = spec.rpartition(":")
    if not module_part or not function_name:
        raise SetupError(f"--setup {spec}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    module, origin = _import(module_part)
    function = getattr(module, function_name, None)
    if function is None:
        defined = sorted(
            name for name, value in vars(module).items()
            if callable(value) and getattr(value, "__module__", None) == module.__name__
        )  # fmt: skip
        close = difflib.get_close_matches(function_name, defined, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        hint = hint or (f" (it defines: {', '.join(defined)})" if defined else "")
        raise SetupError(f"{origin}: no function {function_name!r}{hint}")
    if not callable(function):
        raise SetupError(
            f"{origin}: {function_name!r} is a {type(function).__name__}, not a function"
        )
    setup = _call(function, origin, function_name)
    if not isinstance(setup, TrainingSetup):
        raise SetupError(
            f"{origin}: {function_name}() returned a {type(setup).__name__}, not a "
            "quad_doctor.TrainingSetup"
        )
    setup.validate()  # fields changed after construction are caught too
    return setup


def _import(module_part: str) -> tuple[Any, str]:
    """The module for a file path or a dotted name, and how to name it in messages."""
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise SetupError(f"{path}: setup file not found")
        directory = str(path.resolve().parent)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = f"quad_doctor_setup_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _guarded_import(lambda: spec.loader.exec_module(module), str(path))
        return module, str(path)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    module = _guarded_import(lambda: importlib.import_module(module_part), module_part)
    return module, getattr(module, "__file__", None) or module_part


def _guarded_import(load: Callable[[], Any], origin: str) -> Any:
    try:
        return load()
    except SyntaxError as exc:
        where = f"{exc.filename or origin}:{exc.lineno}" if exc.lineno else origin
        raise SetupError(f"{where}: syntax error: {exc.msg}") from exc
    except ModuleNotFoundError as exc:
        if exc.name and origin.startswith(exc.name):
            raise SetupError(f"{origin}: module not found") from exc
        raise SetupError(f"{_where(exc, origin)}: import failed: {exc}") from exc
    except Exception as exc:
        raise SetupError(
            f"{_where(exc, origin)}: importing it raised {type(exc).__name__}: {exc}"
        ) from exc


def _call(function: Callable[[], Any], origin: str, name: str) -> Any:
    try:
        return function()
    except SetupError as exc:  # a TrainingSetup field rejected inside their function
        raise SetupError(f"{origin}: {name}(): {exc}") from exc
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise SetupError(
            f"{_where(exc, origin)}: {name}() raised {type(exc).__name__}"
            + (f": {message}" if message else "")
        ) from exc


def _where(exc: BaseException, origin: str) -> str:
    """`file.py:LINE` of the innermost frame of the user's own code, else the origin."""
    return user_frame(exc, function=False) or origin


def user_frame(exc: BaseException, function: bool = True) -> str:
    """`src/models/encoders.py:42 in forward`: the innermost frame of a traceback that lies in the
    user's code (not in quad-doctor, the standard library or an installed package); "" when none
    does."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<"):
            continue  # <string>, <frozen …>
        resolved = Path(frame.filename).resolve()
        if any(resolved.is_relative_to(folder) for folder in PACKAGE_FOLDERS):
            continue
        if "site-packages" in resolved.parts:
            continue
        if "/lib/python" in str(resolved):
            continue
        try:
            shown = resolved.relative_to(Path.cwd())
        except ValueError:
            shown = resolved
        return f"{shown}:{frame.lineno}" + (f" in {frame.name}" if function else "")
    return ""
