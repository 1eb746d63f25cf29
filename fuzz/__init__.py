"""Coverage-guided fuzz targets for every parser of hostile bytes (issue 11), one module per target.

Each target module has ``one_input(data: bytes) -> None``: it hands ``data`` to one parser and catches
only the errors that parser documents (``EnvelopeError``, ``SchemaError``, ``BridgeError``, the config
errors, ...). Anything else escapes and is a crash: a bug to fix at its root and to pin with a
regression test in ``tests/fuzz/test_regressions.py``. Some targets also check properties the parser
promises (the frame decoder gives the same frames whatever the split; what the schema accepts encodes
and decodes back to itself), with plain ``assert``.

``python -m fuzz.run`` runs them: under atheris (libFuzzer) when it is installed, else under hypothesis.
``fuzz/corpus/<target>/`` holds the seeds, written by ``python -m fuzz.seeds`` from tests/vectors and
from valid configuration files. See docs/fuzzing.md.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Every target, by module name under fuzz/; fuzz/corpus/<name>/ holds its seeds.
TARGETS = (
    "envelope",
    "payload",
    "frames",
    "lines",
    "state",
    "export_record",
    "agent_config",
    "fleet_config",
)

# Where targets that need files (the TOML loaders read paths) keep them; fuzz.run points it at its work
# directory, because libFuzzer ends the process without running atexit handlers.
SCRATCH_ENV = "EDGESEAL_FUZZ_SCRATCH"


def scratch_dir(name: str) -> Path:
    """A private directory for target ``name``: under $EDGESEAL_FUZZ_SCRATCH, else a new temporary one."""
    base = os.environ.get(SCRATCH_ENV)
    if base:
        path = Path(base) / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix=f"edgeseal-fuzz-{name}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
