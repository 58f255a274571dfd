"""`nessa align`: train an alignment and manage the registered ones (list, register, activate);
its `learning-curve` and `adapt` commands are app/cli/lab_curve.py and app/cli/lab_adapt.py."""
from __future__ import annotations

import pathlib
import sys

from app.cli import lab_adapt, lab_curve
from app.cli.common import actor, fail, path_in_force
from app.settings import Settings


def register(sub, settings: Settings) -> None:
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
    lab_curve.add_parser(asub, settings)
    lab_adapt.add_parser(asub)
    asub.add_parser("list")
    reg = asub.add_parser("register")
    reg.add_argument("path")
    act = asub.add_parser("activate", help="same as `nessa models activate`")
    act.add_argument("name")
    act.add_argument("--force", action="store_true", help="skip the evaluation gate")
    align.set_defaults(func=cmd_align)


def cmd_align(args, settings: Settings) -> int:
    if args.align_command == "train":
        return _train(args, settings)
    if args.align_command == "learning-curve":
        return lab_curve.run(args, settings)
    if args.align_command == "adapt":
        return lab_adapt.run(args, settings)
    return _registry_command(args, settings)


def _train(args, settings: Settings) -> int:
    from app.model_catalog import load_embedder

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
        from nessa.lab.train import train_from_folder

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
    if not args.no_register:
        _register_trained(out_dir / artifact.name, artifact.name, settings)
    return 0


def _register_trained(directory: pathlib.Path, name: str, settings: Settings) -> None:
    """Register a freshly trained artifact, where the database is initialised."""
    from app.services.registry import register_artifact
    from app.store import db

    url = settings.resolved_database_url
    if db.current_revision(url) != db.head_revision():
        print("database not initialised; not registered (run `nessa db upgrade`, then `nessa align activate`)")
        return
    engine = db.make_engine(url)
    with db.make_session_factory(engine)() as session:
        register_artifact(session, directory, actor=actor())
        session.commit()
    engine.dispose()
    print(f"registered {name}; measure it against the path in force with "
          f"`nessa models evaluate {name}`, then `nessa models activate {name}`")


def _registry_command(args, settings: Settings) -> int:
    """`nessa align list`, `register` and `activate`."""
    from app.errors import ApiError
    from app.services.registry import activate, register_artifact
    from app.store import db

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


def _network_config(args):
    """NetworkConfig from the `--<field>` flags that were given (others keep defaults)."""
    import dataclasses

    from nessa.lab.network_config import NetworkConfig

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

    from nessa.lab.network_config import NetworkConfig

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
