"""Options and behaviour shared by every command, so they act the same everywhere."""

from __future__ import annotations

import functools
import math
import os
import typing
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from brcatool.artifacts import DEFAULT_WORKDIR
from brcatool.errors import BrcaError, NotBuiltError


class _LazyConsole:
    """A ``rich.console.Console`` made on first use: a quiet run never imports rich (~16 ms)."""

    def __init__(self, **options: Any) -> None:
        self._options, self._console = options, None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console: Any = _LazyConsole(highlight=False)
err_console: Any = _LazyConsole(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


#: Exceptions typer itself turns into an exit code and message: exits, aborts and usage errors. Newer typer
#: vendors click (typer._click) and plain ``click`` may not be installed, so take its classes from typer.
_CLI_EXITS = (typer.Exit, typer.Abort,
              next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


def fail(message: str, code: int = 1) -> typer.Exit:
    from rich.markup import escape

    # escaped: a fix such as pip install 'brcatool[dask]' must not be read as rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def report_errors(fn: F) -> F:
    """Turn the library's exceptions into one red line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotBuiltError as exc:
            raise fail(exc.one_line(), code=2) from None
        except BrcaError as exc:
            raise fail(exc.one_line()) from None
        except OSError as exc:  # unwritable workdir, full disk, vanished file: the user's to fix
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc} (fix: check the path, its permissions and "
                       "free disk space)") from None
        except MemoryError:
            raise fail("out of memory (fix: lower the sizes asked for, e.g. --batch-size, --patch-size "
                       "or --workers, or use a machine with more memory)") from None
        except BrokenExecutor as exc:  # a worker process was killed (OOM killer, kill -9)
            raise fail(f"a worker process died ({' '.join(str(exc).split())[:200]}) (fix: re-run the "
                       "same command to resume finished units; lower --workers if memory ran "
                       "out)") from None
        except KeyboardInterrupt:
            raise fail("interrupted; finished outputs are kept, re-run the same command to resume",
                       code=130) from None
        except _CLI_EXITS:
            raise  # typer.Exit and usage errors: typer reports them itself
        except Exception as exc:  # a bug: still one line (BRCATOOL_DEBUG=1 shows the traceback)
            if os.environ.get("BRCATOOL_DEBUG"):
                raise
            raise fail(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (fix: "
                       "this is a bug in brcatool; re-run with BRCATOOL_DEBUG=1 for the traceback and "
                       "report it)") from None

    return wrapper  # type: ignore[return-value]


def fmt_metric(x: float | None, digits: int = 3, sign: bool = False) -> str:
    """A metric for a table or log line: ``n/a`` when missing (None or NaN)."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _click_type_is(param: Any, *class_names: str) -> bool:
    """Whether an older typer's click parameter type is one of ``class_names`` (by class name: typer
    0.26-0.28 vendors click as ``typer._click``, whose classes are not plain click's)."""
    return any(c.__name__ in class_names for c in type(getattr(param, "type", None)).__mro__)


def _is_plain_str_option(param: Any) -> bool:
    if getattr(param, "param_type_name", None) != "option" or getattr(param, "multiple", False):
        return False
    if getattr(param, "nargs", 1) != 1:
        return False
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is None:  # an older typer: a click parameter type
        return _click_type_is(param, "StringParamType")
    return annotation is str or set(typing.get_args(annotation)) == {str, type(None)}


def _is_number_option(param: Any) -> bool:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is None:  # an older typer: a click parameter type
        return _click_type_is(param, "IntParamType", "FloatParamType")
    return bool({annotation, *typing.get_args(annotation)} & {int, float})


def _join_lists(params: dict[str, Any], name: str, val: Any, source: Path | None = None) -> Any:
    """A YAML list for a plain (single, string) option becomes its comma-separated form.

    ``true``/``false`` for a number option is refused (click would read ``epochs: true`` as 1).
    """
    param = params.get(name)
    if isinstance(val, bool) and _is_number_option(param):
        raise BrcaError(f"option {name!r} must be a number, got {str(val).lower()}", path=source,
                        fix=f"write a number, e.g. `{name.replace('_', '-')}: 1`")
    if isinstance(val, list) and _is_plain_str_option(param):
        return ",".join(str(v) for v in val)
    return val


def _every_command(ctx: typer.Context) -> dict[str, Any]:
    """The root app's commands; all of brcatool's when ``cli.app.main`` built the one asked for
    alone (a config file may hold the other commands' options and sections)."""
    commands = dict(getattr(ctx.find_root().command, "commands", {}))
    from brcatool.cli.app import COMMANDS, build_app

    if commands and set(commands) < set(COMMANDS):
        commands = dict(typer.main.get_command(build_app()).commands)  # type: ignore[attr-defined]
    return commands


def _all_param_names(commands: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for cmd in commands.values():
        names.update(p.name for p in cmd.params if p.name)
    return names


def _load_config(ctx: typer.Context, _param: Any, value: Path | None) -> Path | None:
    """Eager ``--config``: YAML values become this command's defaults, so flags still win.

    The file may be flat (``patches: 35``) or have one section per command
    (``tile: {patches: 35}``); flat keys meant for other commands are ignored, keys that
    no command knows are errors (typos should not pass silently).
    """
    if value is None or ctx.resilient_parsing:
        return value
    from brcatool.config import key, load_yaml

    try:
        data = load_yaml(value)
        params = {p.name: p for p in ctx.command.params if p.name}
        mine = set(params)
        every = _every_command(ctx)
        known = _all_param_names(every)
        commands = set(every)
        defaults: dict[str, Any] = {}
        for raw, val in data.items():
            name = key(str(raw))
            if str(raw) in commands:
                if not isinstance(val, dict):
                    raise BrcaError(f"section {raw!r} must be a mapping", path=value)
                if str(raw) != ctx.info_name:
                    continue
                for sub_raw, sub_val in val.items():
                    sub = key(str(sub_raw))
                    if sub not in mine:
                        raise BrcaError(f"unknown option {sub_raw!r} for `{raw}`", path=value,
                                        fix=f"see `brcatool {raw} --help` for valid names")
                    defaults[sub] = _join_lists(params, sub, sub_val, value)
            elif name in mine:
                defaults.setdefault(name, _join_lists(params, name, val, value))
            elif name not in known:
                raise BrcaError(f"unknown option {raw!r}", path=value,
                                fix="use option names from `brcatool COMMAND --help`")
    except BrcaError as exc:
        raise fail(exc.one_line()) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def default_workdir() -> Path:
    """The built-in workdir; ``BRCATOOL_WORKDIR`` overrides it through ``WorkdirOpt``'s envvar."""
    return Path(DEFAULT_WORKDIR)


WorkdirOpt = Annotated[
    Path,
    typer.Option("--workdir", "-w", envvar="BRCATOOL_WORKDIR", file_okay=False,
                 help="Folder holding every artifact of a project.", show_default=True),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", is_eager=True, callback=_load_config, dir_okay=False,
                 help="YAML file of option values (keys = option names); flags override it."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same result.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace outputs made with other parameters.")
]
# where per-slide units run (tile, embed): see brcatool.executors
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", metavar="K/N", show_default=False,
    help="Work on shard K of N (balanced, the same in every process; e.g. a Slurm array task). "
         "The shard that finds every slide finished writes the merged tables.")]
DaskOpt = Annotated[str | None, typer.Option(
    "--dask", metavar="ADDRESS|local:N", show_default=False,
    help="Run the units as Dask tasks: a scheduler address (tcp://host:8786) or local:N worker "
         "processes. Needs `pip install brcatool[dask]`.")]
MergeOpt = Annotated[bool, typer.Option(
    "--merge", help="Only write the merged tables from the finished per-slide records (after shards).")]
