"""``python -m cnnviz.sweep``: two tools of the sweep (the sweep itself is ``cnnviz sweep``).

* ``--one NAME [--dtype bfloat16]``: probe one model in this process, print its row as JSON;
* ``--write-catalog``: regenerate ``support/model_params.csv`` and ``support/smoke_models.txt``.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--one"] and len(args) >= 2:
        import torch

        from .probe import probe

        dtype = (
            torch.bfloat16 if "--dtype" in args and args[args.index("--dtype") + 1] == "bfloat16" else None
        )
        row = probe(args[1], dtype=dtype or torch.float32)
        print(json.dumps(row, indent=2))
        return 0
    if args[:1] == ["--write-catalog"]:
        from .names import PARAMS_CSV, SMOKE_TXT, write_catalog

        models, families = write_catalog()
        print(f"{models} models -> {PARAMS_CSV}; {families} families -> {SMOKE_TXT}")
        return 0
    print(
        "usage: python -m cnnviz.sweep --one NAME [--dtype bfloat16] | --write-catalog\n"
        "the sweep itself: cnnviz sweep [PATTERN] (or python -m cnnviz sweep)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
