"""``python -m structmat.experiments ...`` (also under ``torchrun``): the ``structmat`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
