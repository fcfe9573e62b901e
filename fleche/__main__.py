"""``python -m fleche``: the same command line as the ``fleche`` script."""

from fleche.cli import main

if __name__ == "__main__":
    main()
