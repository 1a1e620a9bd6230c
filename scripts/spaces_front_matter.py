"""Write the curated models' Hub repositories into README.md's front matter for Hugging Face Spaces.

    python scripts/spaces_front_matter.py          # rewrite the `models:` and `preload_from_hub:` keys
    python scripts/spaces_front_matter.py --check  # exit 1 if README.md is out of date with models.yaml

`models:` links the Space to the model pages; `preload_from_hub:` downloads the weights when the Space
is built, so the app never waits for them. Each entry is a whole repository: timm's repositories
hold the weights (`model.safetensors`, on older ones also `pytorch_model.bin`) and `config.json`,
and naming one file that a repository lacks would fail the Space's build. Only these two keys are
touched; the rest of the front matter is left as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnviz.zoo import curated  # noqa: E402

KEYS = ("models", "preload_from_hub")


def hub_repos() -> list[str]:
    """The Hub repository of each curated model's weights, in models.yaml's order, without repeats."""
    repos: list[str] = []
    for entry in curated():
        cfg = timm.models.get_pretrained_cfg(entry.id, allow_unregistered=False)
        repo = (cfg.hf_hub_id or "").split("@")[0] if cfg else ""
        if not repo:
            raise SystemExit(f"models.yaml: {entry.id} has no weights on the Hugging Face Hub (no hf_hub_id)")
        if repo not in repos:
            repos.append(repo)
    return repos


def split_front_matter(text: str) -> tuple[list[str], str]:
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise SystemExit("README.md does not start with a '---' front matter block")
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            return lines[1:end], "\n".join(lines[end:])
    raise SystemExit("README.md's front matter block has no closing '---'")


def without_keys(front: list[str]) -> list[str]:
    """The front matter lines minus our keys and their list items."""
    out, skipping = [], False
    for line in front:
        top_level = line[:1] not in (" ", "-", "\t", "")
        if top_level:
            skipping = line.split(":", 1)[0].strip() in KEYS
        if not skipping:
            out.append(line)
    return out


def render(text: str, repos: list[str]) -> str:
    front, rest = split_front_matter(text)
    block = []
    for key in KEYS:
        block.append(f"{key}:")
        block.extend(f"  - {repo}" for repo in repos)
    kept = without_keys(front)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(["---", *kept, *block, rest])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is stale")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    updated = render(text, hub_repos())
    if args.check:
        if updated != text:
            print(f"{args.readme}: models/preload_from_hub are stale; run scripts/spaces_front_matter.py")
            return 1
        print(f"{args.readme}: front matter is up to date")
        return 0
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: wrote {len(hub_repos())} repositories into models: and preload_from_hub:")
    return 0


if __name__ == "__main__":
    sys.exit(main())
