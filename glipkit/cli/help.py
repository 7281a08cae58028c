"""How every command answers `--help` and a malformed command line.

Help: the options in named panels (`rich_help_panel`: Input, Model, Filters, ...), two columns whose first holds
each flag name whole (never cut at 80 columns), switches without a type, every default labelled. A usage error
(unknown option, bad value, a shell-expanded glob) is one `error:` line and exit code 2.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# Typer >= 0.20 parses with its own copy of click: its exceptions are not the `click` package's.
from typer._click.exceptions import UsageError

# The option panels of every command's help, in this order; options without a panel come last.
INPUT, MODEL, PHRASES, FILTERS, TRAINING, SPEED, OUTPUT = ("Input", "Model", "Phrases", "Filters", "Training",
                                                           "Speed", "Output")
PANEL_ORDER = ("Arguments", INPUT, MODEL, PHRASES, FILTERS, TRAINING, SPEED, OUTPUT)
OTHER_PANEL = "Options"
NAME_WIDTH = 28  # a name with its metavar wider than this puts the metavar on the next line
_TYPE_METAVARS = {"int": "INT", "int range": "INT", "float": "FLOAT", "float range": "FLOAT", "str": "TEXT",
                  "Path": "PATH", "path": "PATH", "bool": ""}
GLOB_HINT = ("quote globs and brace ranges (--shards 'data/*.tar'), or the shell expands them into several "
             "arguments")


def usage_error(ctx: typer.Context, error: UsageError) -> None:
    """Print a usage error as one line (with a hint for a shell-expanded glob) and exit 2."""
    message = error.format_message().rstrip(".")
    if "unexpected extra argument" in message:
        message += f"; {GLOB_HINT}"
    typer.echo(f"error: {message}. See '{ctx.command_path} --help'.", err=True)
    raise typer.Exit(2)


def _metavar(param: TyperOption | TyperArgument, ctx: typer.Context) -> str:
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return ""
    if param.metavar:
        return param.metavar
    label = param.display_type(ctx).strip("<>")
    label = label[5:-1] if label.startswith("list[") else label
    return _TYPE_METAVARS.get(label, label)


def _names(param: TyperOption | TyperArgument, ctx: typer.Context) -> list[str]:
    """The name column's lines: the flag names (short ones first) with the metavar, then the negative names."""
    if isinstance(param, TyperArgument):
        return [param.display_name_raw.upper() + ("..." if param.nargs != 1 else "")]
    first = ", ".join(sorted(param.opts, key=len))
    metavar = _metavar(param, ctx)
    if metavar and len(first) + 1 + len(metavar) > NAME_WIDTH:
        lines = [first, f"  {metavar}"]
    else:
        lines = [f"{first} {metavar}".rstrip()]
    return lines + list(param.secondary_opts)


def default_label(param: TyperOption | TyperArgument) -> Optional[str]:
    """The default as the help shows it: `show_default` text, on/off for switches, an enum's value; None: none."""
    show = getattr(param, "show_default", None)
    if isinstance(show, str):
        return show
    if show is False:
        return None
    default = param.default
    if callable(default):
        return None
    if isinstance(param, TyperOption) and param.is_flag:
        return None if param.is_eager else "on" if default else "off"  # eager: --version, --help
    if default is None or default == "" or (isinstance(default, (list, tuple)) and not default):
        return None
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, (list, tuple)):
        return ", ".join(str(d.value if isinstance(d, enum.Enum) else d) for d in default)
    return str(default)


def _range(param: TyperOption | TyperArgument) -> Optional[str]:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    return f"{low:g} to {high:g}" if low is not None and high is not None else None


def _help_text(param: TyperOption | TyperArgument):
    text = _markup(getattr(param, "help", None) or "")
    labels = [label for label in (_range(param), _default_text(param)) if label]
    if getattr(param, "required", False):
        labels.append("required")
    if labels:
        text.append((" " if text.plain else "") + f"({'; '.join(labels)})", style="dim")
    return text


def _default_text(param: TyperOption | TyperArgument) -> Optional[str]:
    label = default_label(param)
    return None if label is None else f"default {label}"


def _markup(text: str):
    from rich.errors import MarkupError
    from rich.text import Text

    try:
        return Text.from_markup(text)
    except MarkupError:
        return Text(text)


def _panels(ctx: typer.Context, command: TyperCommand | TyperGroup) -> dict[str, list]:
    """Parameters by panel, panels in PANEL_ORDER (others after them); ungrouped options (--help) last."""
    panels: dict[str, list] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        default = "Arguments" if isinstance(param, TyperArgument) else OTHER_PANEL
        panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(param)
    rank = {name: i for i, name in enumerate(PANEL_ORDER)}
    return dict(sorted(panels.items(), key=lambda item: rank.get(item[0], len(rank) + (item[0] == OTHER_PANEL))))


def render_help(command: TyperCommand | TyperGroup, ctx: typer.Context) -> None:
    """Print `command`'s help: usage, description, option panels and, for a group, its commands."""
    from rich.console import Console, Group
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table

    console = Console(highlight=False)
    console.print(Padding(command.get_usage(ctx), (1, 1, 0, 1)))
    if command.help:
        paragraphs = inspect.cleandoc(command.help).partition("\f")[0].split("\n\n")
        body = [_markup(" ".join(p.split("\n")).strip()) for p in paragraphs]
        body[0].stylize("bold")
        parts = []
        for i, text in enumerate(body):
            parts += [text] if i == 0 else [_markup(""), text]
        console.print(Padding(Group(*parts), (1, 1, 1, 1)))
    panels = _panels(ctx, command)
    width = max((len(line) for params in panels.values() for p in params for line in _names(p, ctx)), default=0)
    for title, params in panels.items():
        table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False, expand=True)
        table.add_column(no_wrap=True, min_width=width, style="bold cyan")
        table.add_column(ratio=1)
        for param in params:
            table.add_row("\n".join(_names(param, ctx)), _help_text(param))
        console.print(Panel(table, title=title, title_align="left", border_style="dim"))
    if isinstance(command, TyperGroup):
        table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False, expand=True)
        table.add_column(no_wrap=True, style="bold cyan")
        table.add_column(ratio=1)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                table.add_row(name, _markup(sub.get_short_help_str(limit=90)))
        console.print(Panel(table, title="Commands", title_align="left", border_style="dim"))


class GlipkitCommand(TyperCommand):
    """A Typer command with glipkit's help layout and one-line usage errors."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        render_help(self, ctx)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as error:
            usage_error(ctx, error)


class GlipkitGroup(TyperGroup):
    """A Typer group (glipkit, glipkit eval, glipkit models) with glipkit's help layout."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        render_help(self, ctx)


def use_glipkit_help(app: Any) -> None:
    """Give every command and group of a Typer app (registered so far, recursively) glipkit's classes."""
    from typer.models import DefaultPlaceholder

    for info in app.registered_commands:
        if info.cls in (None, TyperCommand) or isinstance(info.cls, DefaultPlaceholder):
            info.cls = GlipkitCommand
    for info in app.registered_groups:
        if info.cls in (None, TyperGroup) or isinstance(info.cls, DefaultPlaceholder):
            info.cls = GlipkitGroup
        use_glipkit_help(info.typer_instance)
