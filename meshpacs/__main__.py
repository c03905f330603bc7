"""``python -m meshpacs``: the same as the ``meshpacs`` command."""

from meshpacs.cli import main

if __name__ == "__main__":
    main()
