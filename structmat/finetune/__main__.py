"""``python -m structmat.finetune ...`` (also under ``torchrun``): same as ``structmat finetune``."""

from ..cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["finetune", *sys.argv[1:]]))
