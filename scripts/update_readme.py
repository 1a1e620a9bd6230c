"""Copy the support matrix's headline numbers from support/summary.md into README.md.

    python scripts/update_readme.py

Replaces what lies between README.md's ``<!-- sweep:begin -->`` and ``<!-- sweep:end -->`` with
`cnnviz.sweep.summary.readme_excerpt` of the committed summary; tests/test_sweep.py checks that
the two agree, so run this after committing a new sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnviz.sweep.summary import readme_excerpt  # noqa: E402

BEGIN, END = "<!-- sweep:begin -->\n", "<!-- sweep:end -->"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    excerpt = readme_excerpt((ROOT / "support" / "summary.md").read_text())
    readme.write_text(f"{before}{BEGIN}{excerpt}\n{END}{after}")
    print(f"README.md: sweep block updated from support/summary.md ({len(excerpt.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
