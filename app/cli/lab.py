"""`nessa eval` and `nessa align`: training, evaluating and adapting alignments."""
from __future__ import annotations

import sys

from app.cli.common import actor, fail, open_services, path_in_force
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    from nessa.lab.evaluation import add_arguments as add_eval_arguments

    evaluation = sub.add_parser("eval", help="every system on one test corpus, one run, one table")
    add_eval_arguments(evaluation, shared_data_dir=settings.shared_data_dir,
                       cache_dir=settings.cache_dir / "embeddings")
    evaluation.set_defaults(func=cmd_eval)
    align = sub.add_parser("align", help="alignment between the runtime and enrollment spaces")
    asub = align.add_subparsers(dest="align_command", required=True)
    train = asub.add_parser("train", help="train an alignment on paired embeddings of real speech")
    train.add_argument("--train-dir", action="append", help="<speaker>/<utterance> folder or LibriSpeech flat folder")
    train.add_argument("--list", action="append", help="file of '<speaker> <path>' lines")
    train.add_argument("--name", required=True)
    train.add_argument("--out", help="output directory (default: <data dir>/artifacts)")
    train.add_argument("--source", help="runtime model version (default: the one in force)")
    train.add_argument("--target", help="enrollment model version (default: the enrollment space in force)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--arch", default="ridge", choices=["ridge", "linear", "mlp", "resmlp", "twotower"],
                       help="ridge (closed form) or an alignment network")
    _add_network_flags(train)
    train.add_argument("--no-register", action="store_true")
    from nessa.lab.learning_curve import add_arguments as add_learning_curve_arguments

    curve = asub.add_parser("learning-curve", help="EER against the number of real training speakers, with a trend")
    add_learning_curve_arguments(curve, shared_data_dir=settings.shared_data_dir,
                                 cache_dir=settings.cache_dir / "embeddings")

    import dataclasses

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
    for field in dataclasses.fields(AdaptConfig):
        if type(field.default) in (int, float, str):
            adapt.add_argument(f"--{field.name.replace('_', '-')}", dest=f"adapt_{field.name}",
                               type=type(field.default), help=f"default {field.default}")

    asub.add_parser("list")
    reg = asub.add_parser("register")
    reg.add_argument("path")
    act = asub.add_parser("activate", help="same as `nessa models activate`")
    act.add_argument("name")
    act.add_argument("--force", action="store_true", help="skip the evaluation gate")
    align.set_defaults(func=cmd_align)


def cmd_align(args, settings: Settings) -> int:
    import pathlib

    from app.store import db
    from app.errors import ApiError
    from app.services.registry import activate, register_artifact

    if args.align_command == "train":
        from app.model_catalog import load_embedder
        from nessa.lab.train import train_from_folder

        sources = [pathlib.Path(p) for p in (args.train_dir or [])] + [pathlib.Path(p) for p in (args.list or [])]
        if not sources:
            return fail("give at least one --train-dir (a <speaker>/<utterance> folder) or --list file")
        missing = [str(p) for p in sources if not p.exists()]
        if missing:
            return fail(f"training data not found: {', '.join(missing)}")
        out_dir = pathlib.Path(args.out) if args.out else settings.artifacts_dir
        command = "nessa " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("nessa") else ""
        # by default: the runtime model and enrollment space of the path in force
        in_force = path_in_force(settings)
        source = load_embedder(args.source or (in_force.runtime_model if in_force else settings.runtime_model))
        target = load_embedder(args.target or (in_force.enrollment_space if in_force else settings.enroll_model))
        if args.arch == "ridge":
            artifact = train_from_folder(source, target, [str(p) for p in sources], out_dir=out_dir, name=args.name,
                                         seed=args.seed, cache_dir=settings.cache_dir / "embeddings", command=command)
        else:
            from nessa.lab.train_network import train_network_from_folders

            try:
                config = _network_config(args)
            except ValueError as exc:
                return fail(str(exc))
            artifact = train_network_from_folders(
                source, target, [str(p) for p in sources], out_dir, args.name, config=config, seed=args.seed,
                cache_dir=settings.cache_dir / "embeddings", command=command,
                concat_dir=settings.data_dir / "corpora")
        print(f"saved alignment {artifact.name} to {out_dir / artifact.name}")
        for key, value in sorted(artifact.metrics.get("summary", {}).items()):
            print(f"  {key}: {value}")
        if args.no_register:
            return 0
        url = settings.resolved_database_url
        if db.current_revision(url) != db.head_revision():
            print("database not initialised; not registered (run `nessa db upgrade`, then `nessa align activate`)")
            return 0
        engine = db.make_engine(url)
        with db.make_session_factory(engine)() as session:
            register_artifact(session, out_dir / artifact.name, actor=actor())
            session.commit()
        engine.dispose()
        print(f"registered {artifact.name}; measure it against the path in force with "
              f"`nessa models evaluate {artifact.name}`, then `nessa models activate {artifact.name}`")
        return 0

    if args.align_command == "learning-curve":
        from app.model_catalog import load_embedder
        from nessa.lab.learning_curve import main_args as learning_curve_main

        learning_curve_main(args, load_embedder(settings.runtime_model), load_embedder(settings.enroll_model))
        return 0
    if args.align_command == "adapt":
        return _align_adapt(args, settings)

    engine = db.make_engine(settings.resolved_database_url)
    try:
        with db.make_session_factory(engine)() as session:
            if args.align_command == "list":
                import sqlalchemy as sa

                from app.store import models

                for row in session.scalars(sa.select(models.AlignmentArtifact).order_by(models.AlignmentArtifact.id)):
                    print(f"{row.name}\t{row.source_version} -> {row.target_version}\t{row.state}\t{row.path}")
            elif args.align_command == "register":
                row = register_artifact(session, pathlib.Path(args.path), actor=actor())
                session.commit()
                print(f"registered {row.name}")
            elif args.align_command == "activate":
                deployment = activate(session, args.name, actor=actor(), force=args.force)
                session.commit()
                print(f"activated {args.name} (deployment {deployment.id})")
    except ApiError as exc:
        return fail(exc)
    finally:
        engine.dispose()
    return 0


def _align_adapt(args, settings: Settings) -> int:
    import dataclasses
    import pathlib

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


def _network_config(args):
    """NetworkConfig from the `--<field>` flags that were given (others keep defaults)."""
    import dataclasses

    from nessa.lab.train_network import NetworkConfig

    values = {"arch": args.arch}
    for field in dataclasses.fields(NetworkConfig):
        value = getattr(args, f"net_{field.name}", None)
        if value is not None and field.name != "arch":
            values[field.name] = value
    weights = []
    for item in args.domain_weight or []:
        name, _, weight = item.partition("=")
        try:
            weights.append((name, float(weight)))
        except ValueError:
            raise ValueError(f"--domain-weight needs NAME=WEIGHT, got {item!r}") from None
    if weights:
        values["domain_weights"] = tuple(weights)
    return NetworkConfig(**values)


def _add_network_flags(parser) -> None:
    import dataclasses

    from nessa.lab.train_network import NetworkConfig

    group = parser.add_argument_group("alignment network (with --arch other than ridge; defaults: NetworkConfig)")
    for field in dataclasses.fields(NetworkConfig):
        if field.name in ("arch", "domain_weights"):
            continue
        kind = type(field.default)
        if kind not in (int, float, str):
            continue
        group.add_argument(f"--{field.name.replace('_', '-')}", dest=f"net_{field.name}", type=kind,
                           help=f"default {field.default}")
    group.add_argument("--domain-weight", action="append", help="NAME=WEIGHT for a training folder (repeatable)")


def cmd_eval(args, settings: Settings) -> int:
    import pathlib

    from app.model_catalog import load_embedder
    from nessa.lab.evaluation import main_args

    for folder in (args.eval_dir, args.anchors_dir):
        if not pathlib.Path(folder).is_dir():
            return fail(f"evaluation data not found: {folder}")
    try:
        main_args(args, load_embedder(settings.enroll_model), load_embedder(settings.runtime_model))
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    return 0
