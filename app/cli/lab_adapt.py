"""`nessa align adapt`: fine-tune an alignment on the gallery's own in-domain pairs."""
from __future__ import annotations

import dataclasses
import pathlib

from app.cli.common import actor, fail, open_services
from app.settings import Settings


def add_parser(asub) -> None:
    from nessa.lab.adapt import AdaptConfig

    adapt = asub.add_parser("adapt", help="fine-tune an alignment on the gallery's own in-domain pairs")
    adapt.add_argument("--artifact", help="parent artifact directory (default: the active alignment)")
    source = adapt.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-gallery", action="store_true",
                        help="pairs from the database's completed enrollments (and crops of retained audio)")
    source.add_argument("--pairs", help=".npz with source (N, d_runtime), target (N, d_enroll), speaker (N,)")
    adapt.add_argument("--name", help="default: <parent>+adapted")
    adapt.add_argument("--out", help="output directory (default: <data dir>/artifacts)")
    adapt.add_argument("--activate", action="store_true", help="activate the adapted alignment")
    adapt.add_argument("--no-register", action="store_true")
    # one flag per AdaptConfig setting (given ones override its defaults)
    for field in dataclasses.fields(AdaptConfig):
        if type(field.default) in (int, float, str):
            adapt.add_argument(f"--{field.name.replace('_', '-')}", dest=f"adapt_{field.name}",
                               type=type(field.default), help=f"default {field.default}")


def run(args, settings: Settings) -> int:
    import numpy as np

    from app.errors import ApiError
    from app.services.registry import activate, register_artifact
    from nessa.lab.adapt import AdaptConfig, adapt_from_pairs

    values = {f.name: getattr(args, f"adapt_{f.name}") for f in dataclasses.fields(AdaptConfig)
              if getattr(args, f"adapt_{f.name}", None) is not None}
    try:
        config = AdaptConfig(**values)
    except ValueError as exc:
        return fail(str(exc))
    services = open_services(settings) if (args.from_gallery or not args.artifact or not args.no_register) else None
    artifact_dir = pathlib.Path(args.artifact) if args.artifact else None
    if artifact_dir is None:
        artifact_dir = pathlib.Path(services.paths.current_path())
    if not (artifact_dir / "artifact.json").is_file():
        return fail(f"no alignment artifact at {artifact_dir}")
    if args.from_gallery:
        from app.services.adaptation import gallery_pairs
        from nessa.artifact import AlignmentArtifact

        try:
            source, target, speaker = gallery_pairs(services, AlignmentArtifact.load(artifact_dir))
        except ValueError as exc:
            return fail(str(exc))
    else:
        if not pathlib.Path(args.pairs).is_file():
            return fail(f"no such pairs file: {args.pairs}")
        with np.load(args.pairs, allow_pickle=False) as pairs:
            source, target, speaker = pairs["source"], pairs["target"], pairs["speaker"]
    out_dir = pathlib.Path(args.out) if args.out else settings.artifacts_dir
    adapted = adapt_from_pairs(artifact_dir, source, target, speaker, out_dir, args.name, config)
    info = adapted.config["adaptation"]
    print(f"saved {adapted.name} to {out_dir / adapted.name}: {len(source)} pairs from "
          f"{info['n_speakers']} speakers, parent {info['parent']}, recalibrated: {info['recalibrated']}")
    if args.no_register:
        return 0
    try:
        with services.session() as session:
            register_artifact(session, out_dir / adapted.name, actor=actor())
            if args.activate:
                # an explicit flag: the adapted child of the path in force replaces it
                # without a gate run (recorded as forced in the deployment)
                activate(session, adapted.name, actor=actor(), force=True)
            session.commit()
    except ApiError as exc:
        return fail(exc)
    print(f"registered{' and activated' if args.activate else ''} {adapted.name}")
    return 0
