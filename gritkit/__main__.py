"""``python -m gritkit`` (and ``accelerate launch -m gritkit train ...``) runs the CLI."""

from gritkit.cli import main

main()
