"""``python -m conveyor``: the ``conveyor`` command line."""

from conveyor._cli import main

if __name__ == "__main__":
    main()
