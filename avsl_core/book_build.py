"""Build the Jupyter Book (version 1, offline) from the executed notebooks in book/generated/."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from avsl_core.config import repo_root


def toc_files(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    files += [c["file"] for c in toc.get("chapters", [])]
    return files


def missing_pages(root: Path) -> list[str]:
    out = []
    for f in toc_files(root):
        if not any((root / f"{f}{ext}").exists() for ext in (".md", ".ipynb")):
            out.append(f)
    return out


def build(root: Path | None = None, strict: bool = False) -> Path:
    root = root or repo_root()
    missing = missing_pages(root)
    if missing:
        raise SystemExit("[book] these pages are missing (run `make pipeline` first): " + ", ".join(missing))
    if not (root / "book" / "_vendor_js" / ".complete").exists():
        raise SystemExit("[book] book/_vendor_js is missing (run `make js`)")
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe), "build", str(root), "--builder", "html"] + (["-W", "-n", "--keep-going"] if strict else [])
    t0 = time.time()
    subprocess.run(cmd, cwd=root, check=True)
    index = root / "_build" / "html" / "index.html"
    print(f"[book] built in {time.time() - t0:.1f} s: {index}")
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="quick", help="only reported; pages come from book/generated/")
    ap.add_argument("--strict", action="store_true", help="turn Sphinx warnings into errors")
    a = ap.parse_args(argv)
    build(strict=a.strict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
