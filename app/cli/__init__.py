"""The `nessa` command: one module per command group, each with `register(sub, settings)`."""
from __future__ import annotations

import argparse
import logging

from app.cli import db, diarize, keys, lab, lab_eval, lab_shift, lab_vad, models, serve
from app.cli.common import fail
from app.errors import ApiError
from app.settings import Settings

COMMAND_GROUPS = (serve, db, keys, lab_eval, lab_shift, lab_vad, lab, diarize, models)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    settings = settings or Settings()
    parser = argparse.ArgumentParser(prog="nessa", description="Asymmetric speaker enrollment and verification.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub, settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        return fail(str(exc))
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "alembic.runtime.plugins", "alembic.runtime.migration", "speechbrain.utils.quirks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args, settings)
    except ApiError as exc:  # rendered here, the one way for every command
        return fail(exc)
