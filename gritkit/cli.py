"""The ``gritkit`` command line: it only assembles the commands modules, each a thin layer over the
Python API (core: embed, similarity, chat; then training, rag, eval, serve). Nothing imports this module,
and importing it loads no torch: each command imports what it needs when it runs.
"""

from __future__ import annotations

import typer

from gritkit import commands
from gritkit.eval import commands as eval_commands
from gritkit.export import commands as export_commands
from gritkit.rag import commands as rag_commands
from gritkit.serve import commands as serve_commands
from gritkit.training import commands as training_commands

# Plain help and errors: rich formatting would add ~0.3 s to every start (see benchmarks/cli_startup.py).
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="GRIT: one model that embeds and generates.")
for module in (commands, training_commands, rag_commands, eval_commands, serve_commands, export_commands):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
