"""Builds scribe-client with its gRPC stubs generated from the protos (see generate_stubs.py)."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_stubs import HERE, generate


class BuildWithStubs(build_py):
    """build_py, then the stubs: into the wheel's build folder, or into the source tree for an editable
    install (which imports scribe_client from here)."""

    def run(self) -> None:
        super().run()
        generate(HERE if self.editable_mode else Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithStubs})
