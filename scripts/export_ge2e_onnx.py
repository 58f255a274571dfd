"""Build the ONNX files of the GE2E runtime model from the installed resemblyzer weights (run by `make venv`).

    .venv/bin/python scripts/export_ge2e_onnx.py [--out runtime_models/onnx] [--check]

Writes ge2e-256.onnx (fp32, ``ge2e-256-onnx``), ge2e-256-int8.onnx (dynamic int8 with the
first LSTM layer in fp32, ``ge2e-256-onnx-int8``) and manifest.json (opset, torch / onnx /
onnxruntime versions, source weights and output checksums). Deterministic: the same
weights and library versions give the same bytes (``--check`` rebuilds into a temporary
folder and compares with --out).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from runtime_models.ge2e_onnx import FP32_FILE, INT8_FILE, ONNX_DIR, build_models  # noqa: E402
from speechcore.embedder import sha256_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ONNX_DIR)
    parser.add_argument("--check", action="store_true",
                        help="rebuild in a temporary folder and compare the bytes with --out")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build_models(tmp)
            same = {name: sha256_file(pathlib.Path(tmp) / name) == sha256_file(args.out / name)
                    for name in (FP32_FILE, INT8_FILE)}
        print(json.dumps(same))
        return 0 if all(same.values()) else 1
    manifest = build_models(args.out)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
