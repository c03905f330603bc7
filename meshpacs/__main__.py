"""``python -m meshpacs``: the same as the ``meshpacs`` command."""

from meshpacs.cli import main

main()
