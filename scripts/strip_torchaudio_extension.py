"""Put torchaudio into its pure-Python mode on a CPU-only torch.

PyPI ships only CUDA builds of torchaudio for Linux, and each release pins the exact
torch it was built with. We run torch 2.13.0 (CPU). speechbrain imports torchaudio, but
what it and we use (``torchaudio.compliance.kaldi``, ``torchaudio.functional``) is pure
Python on top of torch. torchaudio's loader treats a *missing* extension library as
"not built" (``_IS_TORCHAUDIO_EXT_AVAILABLE = False``) and only fails on a library that
exists but cannot load, so removing the CUDA-linked ``.so`` files gives a clean import
with no CUDA wheel downloaded. The script then checks the import works.
"""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys


def main() -> int:
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        print("torchaudio is not installed", file=sys.stderr)
        return 1
    lib_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "lib"
    removed = [p for p in lib_dir.glob("*.so")]
    for path in removed:
        path.unlink()
    check = subprocess.run(
        [sys.executable, "-c",
         "import torchaudio, torchaudio.compliance.kaldi, speechbrain; "
         "from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE as ext; "
         "assert not ext; print('torchaudio', torchaudio.__version__, 'pure-Python mode')"],
        capture_output=True, text=True)
    sys.stdout.write(check.stdout)
    sys.stderr.write(check.stderr[-2000:])
    return check.returncode


if __name__ == "__main__":
    sys.exit(main())
