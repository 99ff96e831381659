"""The ``mlxtune`` command line. The only package that decides to print, and that exits.

Training progress is rendered by ``printer.TrainPrinter``, which the
``lora`` command creates and hands to the trainer as its event callback.

Commands import their implementation lazily, so ``mlxtune --help`` and
``mlxtune CMD --help`` never pay for importing mlx.

This module holds the group (errors to one line and an exit code), the
option choices the commands share and ``main``; the commands live by what
they are for: ``models`` (download, convert, fuse, generate, export), ``chatting`` (chat),
``training`` (lora, plan, data check) and ``evaluation`` (eval, recipes).
"""

from __future__ import annotations

import sys

import click

from .. import backends
from ..errors import MlxtuneError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DTYPES = click.Choice(["float32", "float16", "bfloat16"])
BACKENDS = click.Choice(list(backends.BACKENDS))
BACKEND_HELP = "Compute backend: mlx, or numpy (runs anywhere); auto: mlx on a GPU, numpy on a CPU where it implements the model."


class _Group(click.Group):
    """Turns mlxtune's own errors into one line and an exit code; tracebacks are for bugs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MlxtuneError as e:
            click.echo(f"{e.label}: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # before anything was written (training handles its own)
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="mlxtune")
def cli() -> None:
    """Fine-tune small language models with LoRA on a laptop, offline.

    \b
    The everyday journey:
      mlxtune lora --data data/notes.jsonl      # train an adapter (runs/notes)
      mlxtune fuse --adapter runs/notes -o fused
      mlxtune generate --model fused --prompt "Tidy up these notes: ..."
    """


def main() -> None:
    try:
        cli(prog_name="mlxtune")
    except KeyboardInterrupt:  # a Ctrl-C landing after a command's own handling (e.g. while it prints its last words)
        click.echo("Interrupted.", err=True)
        sys.exit(130)


# The commands import CONTEXT and the choices above, so they are imported last.
from .chatting import chat  # noqa: E402
from .evaluation import eval_, recipes  # noqa: E402
from .models import convert, download, export, fuse, generate  # noqa: E402
from .serving import serve  # noqa: E402
from .training import data, lora, plan  # noqa: E402

for _command in (download, convert, lora, plan, fuse, generate, chat, export, serve, eval_, recipes, data):
    cli.add_command(_command)
