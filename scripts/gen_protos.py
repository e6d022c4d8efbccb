"""Generate src/pairline/_proto from protos/ (python, grpc and .pyi stubs).

Run ``python scripts/gen_protos.py``; ``--check`` compares instead of writing and
exits 1 when the committed code is stale. Imports of ``pairline.v1`` in the
generated modules are rewritten to ``pairline._proto.pairline.v1`` so the code
lives inside the package; nothing else is touched.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "src" / "pairline" / "_proto"
_IMPORT = re.compile(r"^from pairline\.v1 import", re.MULTILINE)


def _include_dirs() -> list[str]:
    import google.rpc  # googleapis-common-protos ships google/rpc/*.proto

    grpc_tools_protos = importlib.resources.files("grpc_tools") / "_proto"
    googleapis_root = Path(google.rpc.__path__[0]).parent.parent
    return [str(PROTOS), str(grpc_tools_protos), str(googleapis_root)]


def generate(out: Path) -> None:
    from grpc_tools import protoc

    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        path.write_text(_IMPORT.sub("from pairline._proto.pairline.v1 import", text))
    for pkg in [out, *(d for d in out.rglob("*") if d.is_dir())]:
        (pkg / "__init__.py").touch()


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def stale_files() -> list[str]:
    """Files whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _tree(fresh), _tree(OUT)
        names = sorted(set(want) | set(have))
        return [
            n
            for n in names
            if n not in want or n not in have or not filecmp.cmp(want[n], have[n], shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    ns = parser.parse_args()
    if ns.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: src/pairline/_proto/{name}", file=sys.stderr)
        return 1 if stale else 0
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    generate(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
