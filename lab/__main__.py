"""``python -m lab train <config>``: the lab's command line."""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train": "lab.train"}
    if not argv or argv[0] not in commands:
        print("usage: python -m lab train <config.json> [--resume] [--until N] [--ship] "
              "[--device cpu|cuda|mps] [--dtype float32|bfloat16|float16]")
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
