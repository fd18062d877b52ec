"""Generates scribe_client's gRPC stubs from the protos; the build runs it, and so does `make proto`.

    python generate_stubs.py [OUT]      # OUT: the folder that holds scribe_client/ (default: this one)

grpc_tools writes absolute imports between the stubs (`from transcription.v1 import worker_pb2`), which
would need a top-level `transcription` package on sys.path. The stubs live inside scribe_client instead,
so after protoc those import lines, and only those, become relative ones (`from . import worker_pb2`);
the build fails if protoc's output ever has another form. Nothing else in the output changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The protos: a link to the repository's protos/ (followed into an sdist).
PROTOS = HERE / "protos"
PACKAGE = "transcription/v1"
_ABSOLUTE = re.compile(r"^from transcription\.v1 import ", re.MULTILINE)
_LEFT_OVER = re.compile(r"^\s*(from|import) transcription\b", re.MULTILINE)


def generate(out: Path = HERE) -> list[Path]:
    """Writes scribe_client/gen/transcription/v1/*_pb2{,_grpc}.py{,i} under `out`; returns the files."""
    import grpc_tools

    protos = sorted((PROTOS / PACKAGE).glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files in {PROTOS / PACKAGE}")
    target = out / "scribe_client" / "gen" / "transcription"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *(str(p.relative_to(PROTOS)) for p in protos),
            ],
            check=True,
            cwd=PROTOS,
        )
        files = sorted((Path(tmp) / PACKAGE).iterdir())
        for path in files:
            source = _ABSOLUTE.sub("from . import ", path.read_text())
            if _LEFT_OVER.search(source):
                raise RuntimeError(f"{path.name}: an import of the transcription package that is not understood")
            path.write_text(source)
        for folder in (Path(tmp) / "transcription", Path(tmp) / PACKAGE):
            (folder / "__init__.py").write_text('"""Generated from protos/ by generate_stubs.py; never edited."""\n')
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(tmp) / "transcription", target)
    return sorted(target.rglob("*.py*"))


if __name__ == "__main__":
    written = generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"generate_stubs: {len(written)} files in {written[0].parent}")
