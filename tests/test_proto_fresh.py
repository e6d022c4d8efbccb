"""The committed generated code (src/pairline/_proto) matches protos/.

Uses the checker of ``scripts/gen_protos.py --check`` itself, and shows that it
does notice a tampered, missing or extra generated file and a changed .proto.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_protos.py"


def load_gen_protos() -> ModuleType:
    """A fresh copy of scripts/gen_protos.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("pairline_gen_protos_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gen() -> Iterator[ModuleType]:
    module = load_gen_protos()
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture
def out_copy(gen: ModuleType, tmp_path: Path) -> Path:
    """A copy of the committed generated tree, which the checker is pointed at."""
    copy = tmp_path / "_proto"
    shutil.copytree(gen.OUT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    gen.OUT = copy
    return copy


class TestGeneratedCode:
    def test_checker_looks_at_this_repository(self, gen: ModuleType) -> None:
        """The checker compares protos/ of this checkout with src/pairline/_proto."""
        assert gen.PROTOS == ROOT / "protos"
        assert gen.OUT == ROOT / "src" / "pairline" / "_proto"
        assert sorted(p.name for p in gen.PROTOS.rglob("*.proto")) == [
            "common.proto", "insights.proto", "privacy.proto", "profiles.proto", "router.proto"
        ]

    def test_committed_code_is_fresh(self, gen: ModuleType) -> None:
        """`scripts/gen_protos.py --check` finds no stale file (run `make proto` if it does)."""
        assert gen.stale_files() == []

    def test_generated_modules_are_the_ones_imported(self, gen: ModuleType) -> None:
        """The package imports its generated modules from the checked tree."""
        from pairline._proto.pairline.v1 import router_pb2

        assert Path(router_pb2.__file__).resolve().parent == (gen.OUT / "pairline" / "v1")


class TestCheckerDetectsStaleness:
    def test_untouched_copy_is_fresh(self, gen: ModuleType, out_copy: Path) -> None:
        """Control: an exact copy of the committed tree is not stale."""
        assert gen.stale_files() == []

    def test_tampered_file_is_stale(self, gen: ModuleType, out_copy: Path) -> None:
        """A hand edit to one generated file is reported, and only that file."""
        target = out_copy / "pairline" / "v1" / "router_pb2.py"
        target.write_text(target.read_text() + "\n# edited by hand\n")
        assert gen.stale_files() == ["pairline/v1/router_pb2.py"]

    def test_one_byte_change_is_stale(self, gen: ModuleType, out_copy: Path) -> None:
        """A same-size, one-byte change to a stub is reported (content, not size, compared)."""
        target = out_copy / "pairline" / "v1" / "common_pb2.pyi"
        data = bytearray(target.read_bytes())
        i = data.index(b"CHANNEL_VOICE")
        data[i] = ord("X")
        target.write_bytes(bytes(data))
        assert gen.stale_files() == ["pairline/v1/common_pb2.pyi"]

    def test_missing_and_extra_files_are_stale(self, gen: ModuleType, out_copy: Path) -> None:
        """A deleted generated file and a file that generation would not produce are reported."""
        (out_copy / "pairline" / "v1" / "insights_pb2_grpc.py").unlink()
        (out_copy / "pairline" / "v1" / "old_pb2.py").write_text("# left over\n")
        assert gen.stale_files() == ["pairline/v1/insights_pb2_grpc.py", "pairline/v1/old_pb2.py"]

    def test_changed_proto_makes_committed_code_stale(
        self, gen: ModuleType, out_copy: Path, tmp_path: Path
    ) -> None:
        """Adding a field to a .proto without regenerating is reported for that file's code."""
        protos = tmp_path / "protos"
        shutil.copytree(gen.PROTOS, protos)
        proto = protos / "pairline" / "v1" / "privacy.proto"
        text = proto.read_text()
        marker = "message GetDeletionRequest {\n"
        assert marker in text
        proto.write_text(text.replace(marker, marker + "  string note = 99;\n"))
        gen.PROTOS = protos
        stale = gen.stale_files()
        assert "pairline/v1/privacy_pb2.py" in stale
        assert "pairline/v1/privacy_pb2.pyi" in stale
        assert not any(n.startswith(("pairline/v1/router", "pairline/v1/common")) for n in stale)
