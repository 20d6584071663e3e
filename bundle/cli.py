"""The command-line layer of ``python -m monai.bundle run`` with this bundle's configs.

Every config's ``initialize`` starts with ``$bundle.cli.install()``. Inside the bundle runner's process it

- refuses an override that names no key of the config files given (the runner would silently ignore
  ``--max_epoch 1`` and train for 50 epochs), suggesting the closest key;
- installs a ``sys.excepthook`` that reports a project error — a :class:`~bundle.errors.BundleError`, or a
  ``ValueError`` raised by the bundle's own code — as one ``ERROR <message>`` line on stderr with the error's exit
  status (2 when the run cannot start), instead of MONAI's two or three chained tracebacks. Any other exception
  is a bug and keeps its full traceback; ``RFE_TRACEBACK=1`` restores tracebacks for project errors too.

MONAI Label runs each training as a process of its own (``python -m monailabel.interfaces.utils.app -m train``)
whose output lines are its server log and what ``GET /train/`` returns; there ``install`` installs the same hook, so
a project error ends that process as one ``ERROR`` line too (MONAI Label's overrides are not command-line options,
so none are checked). Anywhere else (MONAI Label's server process, Slicer, tests parsing the configs in-process)
``install`` does nothing.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from bundle.config import suggestion
from bundle.errors import BundleError, ConfigError

__all__ = ["TRACEBACK_ENV", "check_overrides", "excepthook", "install", "project_error"]

TRACEBACK_ENV = "RFE_TRACEBACK"
_PACKAGE_DIR = Path(__file__).resolve().parent
# keyword arguments MONAI's create_workflow / ConfigWorkflow take besides each command's own parameters
_WORKFLOW_ARGS = ("workflow_name", "workflow_type", "properties_path", "bundle_root")


def _main_module() -> tuple[str, ...]:
    """The last parts of the program's path: ``("monai", "bundle", "__main__.py")`` for ``python -m monai.bundle``."""
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return main.parts[-4:]


def _in_bundle_runner() -> bool:
    return _main_module()[-3:] == ("monai", "bundle", "__main__.py")


def _in_monailabel_task() -> bool:
    return _main_module() == ("monailabel", "interfaces", "utils", "app.py")


def install() -> None:
    """In ``python -m monai.bundle``: check the command line's overrides, then install :func:`excepthook`; in a
    MONAI Label task process: install :func:`excepthook`.

    Raises:
        ConfigError: an override that is not a key of the config files (reported by the hook as one line).
    """
    in_runner = _in_bundle_runner()
    if not in_runner and not _in_monailabel_task():
        return
    if not os.environ.get(TRACEBACK_ENV):
        sys.excepthook = excepthook
    if in_runner:
        check_overrides(sys.argv[1:])


def _raised_in_bundle(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and _PACKAGE_DIR in Path(frame.tb_frame.f_code.co_filename).resolve().parents


def project_error(error: BaseException) -> BaseException | None:
    """The innermost error in ``error``'s chain of causes that the project raised for the user, or None."""
    found = None
    while error is not None:
        if isinstance(error, BundleError) or (isinstance(error, ValueError) and _raised_in_bundle(error)):
            found = error
        error = error.__cause__
    return found


def excepthook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """Print a project error as one line and exit with its status; hand anything else to Python's hook."""
    found = project_error(error)
    if found is None:
        sys.__excepthook__(kind, error, traceback)
        return
    message = " ".join(str(found).split()) or type(found).__name__
    print(f"ERROR {message}", file=sys.stderr, flush=True)
    raise SystemExit(getattr(found, "exit_code", 1))


def _option_value(argv: Sequence[str], name: str) -> str | None:
    for index, token in enumerate(argv):
        if token == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"--{name}="):
            return token.split("=", 1)[1]
    return None


def _config_files(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return [str(p) for p in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]


def _config_keys(files: Iterable[str]) -> set[str]:
    from monai.bundle import ConfigParser

    keys = {"_meta_"}
    for file in files:
        keys.update(ConfigParser.load_config_file(file))
    return keys


def check_overrides(argv: Sequence[str]) -> None:
    """Refuse ``--name`` options of a ``monai.bundle`` command line that neither the command nor the configs know.

    ``argv`` is the command line after the program (``["run", "training", "--config_file", ..., "--max_epochs",
    "2"]``). An id with ``#`` is checked by its first part. With ``--args_file`` nothing is checked (the file may
    hold the config files).

    Raises:
        ConfigError: naming the option, the config files and the closest key.
    """
    import monai.bundle.scripts as scripts
    from monai.bundle import ConfigWorkflow
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    command = getattr(scripts, argv[0], None) if argv else None
    files = _option_value(argv, "config_file")
    if command is None or files is None or _option_value(argv, "args_file") is not None:
        return
    files_list = _config_files(files)
    known = set(inspect.signature(command).parameters) | set(inspect.signature(ConfigWorkflow).parameters)
    known.update(_WORKFLOW_ARGS)
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():  # --tracking_uri etc., which --tracking reads
        known.update(settings.get("configs", {}))
    keys = _config_keys(files_list)
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0]
        if name in known or name.replace("::", "#").split("#")[0] in keys:
            continue
        raise ConfigError(
            f"unknown option --{name}: it is not a key of {', '.join(files_list)}, so the bundle runner would "
            f"ignore it{suggestion(name, sorted(keys | known)).replace('did you mean ', 'did you mean --')}"
        )
