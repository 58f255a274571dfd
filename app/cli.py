"""The `nessa` command."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from app.settings import Settings


def _fail(message: str, code: int = 2) -> int:
    print(f"nessa: error: {message}", file=sys.stderr)
    return code


def _path_in_force(settings: Settings):
    """The newest deployment of an initialised database, else None (no service needed)."""
    from app import db
    from app.services.registry import current_deployment

    url = settings.resolved_database_url
    try:
        if db.current_revision(url) != db.head_revision():
            return None
    except Exception:
        return None
    engine = db.make_engine(url)
    try:
        with db.make_session_factory(engine)() as session:
            row = current_deployment(session)
            if row is not None:
                session.expunge(row)
            return row
    finally:
        engine.dispose()


def _actor() -> str:
    """Who runs this command, for the model registry's audit log."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _services(settings: Settings):
    from app.services.container import SchemaNotReady, Services

    try:
        return Services(settings)
    except SchemaNotReady as exc:
        raise SystemExit(_fail(str(exc)))


# -- db ---------------------------------------------------------------------------
def cmd_db(args, settings: Settings) -> int:
    from app import db

    url = settings.resolved_database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.db_command == "upgrade":
        db.upgrade(url, args.revision)
        print(f"database at {db.current_revision(url)} ({_safe_url(url)})")
    elif args.db_command == "downgrade":
        db.downgrade(url, args.revision)
        print(f"database at {db.current_revision(url) or 'base'} ({_safe_url(url)})")
    else:
        print(db.current_revision(url) or "base")
    return 0


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


# -- keys -------------------------------------------------------------------------
def cmd_keys(args, settings: Settings) -> int:
    from app import db
    from app.errors import ApiError

    engine = db.make_engine(settings.resolved_database_url)
    session_factory = db.make_session_factory(engine)
    commands = {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}
    try:
        with session_factory() as session:
            return commands[args.keys_command](args, session)
    except ApiError as exc:
        return _fail(exc.message + f" ({exc.detail})")
    finally:
        engine.dispose()


def _keys_create(args, session) -> int:
    from app import auth

    expires_at = auth.expiry_in_days(args.expires_in_days) if args.expires_in_days is not None else None
    key, row = auth.create_api_key(session, name=args.name, scopes=args.scope, expires_at=expires_at)
    session.commit()
    expiry = f"expires {row.expires_at.isoformat()}" if row.expires_at else "never expires"
    print(f"created API key {row.prefix}... (id {row.id}, scopes {row.scopes}, {expiry}); it is shown only once:")
    print(key)
    return 0


def _keys_list(args, session) -> int:
    from app import auth

    columns = ("id", "prefix", "scopes", "name", "state", "created_at", "last_used_at", "expires_at", "revoked_at")
    print("\t".join(columns))
    for row in auth.list_api_keys(session):
        shown = auth.key_to_dict(row)
        shown.update(prefix=f"{row.prefix}...", scopes=row.scopes)
        print("\t".join("-" if shown[c] is None else str(shown[c]) for c in columns))
    return 0


def _keys_revoke(args, session) -> int:
    import sqlalchemy as sa

    from app import auth, models

    row = session.scalar(sa.select(models.ApiKey).filter_by(prefix=args.prefix.removesuffix("...")))
    if row is None:
        return _fail(f"no API key with prefix {args.prefix!r}")
    # the CLI may revoke the last admin key: whoever runs it can create another
    auth.revoke_api_key(session, row.id, keep_an_admin=False)
    session.commit()
    print(f"revoked {row.prefix}...")
    return 0


# -- serve / worker ---------------------------------------------------------------
def cmd_serve(args, settings: Settings) -> int:
    from app import serving
    from app.factory import create_app

    settings = settings.replace(host=args.host or settings.host, port=args.port or settings.port)
    services = _services(settings)
    app = create_app(settings, services=services, start_worker=args.with_worker or settings.in_process_worker)
    url = f"http://{settings.host}:{settings.port}"
    print(f"NESSA listening on {url}  (database {_safe_url(services.database_url)}, "
          f"worker {'in-process' if args.with_worker else 'separate: run `nessa worker`'})")
    print(f"Create an API key:  .venv/bin/nessa keys create --scope admin   then  "
          f"curl -H 'Authorization: Bearer <key>' {url}/v1/speakers", flush=True)
    serving.serve(app, settings, threads=args.threads)
    return 0


def cmd_worker(args, settings: Settings) -> int:
    from app.worker import build_worker

    services = _services(settings)
    worker = build_worker(services, worker_id=args.worker_id)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"nessa worker {worker.worker_id} polling {_safe_url(services.database_url)}", flush=True)
    worker.run_forever(stop)
    return 0


# -- align ------------------------------------------------------------------------
def cmd_align(args, settings: Settings) -> int:
    import pathlib

    from app import db
    from app.errors import ApiError
    from app.services.registry import activate, register_artifact

    if args.align_command == "train":
        from app.model_registry import load_embedder
        from nessa.cli_support import train_from_folder

        sources = [pathlib.Path(p) for p in (args.train_dir or [])] + [pathlib.Path(p) for p in (args.list or [])]
        if not sources:
            return _fail("give at least one --train-dir (a <speaker>/<utterance> folder) or --list file")
        missing = [str(p) for p in sources if not p.exists()]
        if missing:
            return _fail(f"training data not found: {', '.join(missing)}")
        out_dir = pathlib.Path(args.out) if args.out else settings.artifacts_dir
        command = "nessa " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("nessa") else ""
        # by default: the runtime model and enrollment space of the path in force
        in_force = _path_in_force(settings)
        source = load_embedder(args.source or (in_force.runtime_model if in_force else settings.runtime_model))
        target = load_embedder(args.target or (in_force.enrollment_space if in_force else settings.enroll_model))
        if args.arch == "ridge":
            artifact = train_from_folder(source, target, [str(p) for p in sources], out_dir=out_dir, name=args.name,
                                         seed=args.seed, cache_dir=settings.cache_dir / "embeddings", command=command)
        else:
            from nessa.train_network import train_network_from_folders

            try:
                config = _network_config(args)
            except ValueError as exc:
                return _fail(str(exc))
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
            register_artifact(session, out_dir / artifact.name, actor=_actor())
            session.commit()
        engine.dispose()
        print(f"registered {artifact.name}; measure it against the path in force with "
              f"`nessa models evaluate {artifact.name}`, then `nessa models activate {artifact.name}`")
        return 0

    if args.align_command == "learning-curve":
        from app.model_registry import load_embedder
        from nessa.learning_curve import main_args as learning_curve_main

        learning_curve_main(args, load_embedder(settings.runtime_model), load_embedder(settings.enroll_model))
        return 0
    if args.align_command == "adapt":
        return _align_adapt(args, settings)

    engine = db.make_engine(settings.resolved_database_url)
    try:
        with db.make_session_factory(engine)() as session:
            if args.align_command == "list":
                import sqlalchemy as sa

                from app import models

                for row in session.scalars(sa.select(models.AlignmentArtifact).order_by(models.AlignmentArtifact.id)):
                    print(f"{row.name}\t{row.source_version} -> {row.target_version}\t{row.state}\t{row.path}")
            elif args.align_command == "register":
                row = register_artifact(session, pathlib.Path(args.path), actor=_actor())
                session.commit()
                print(f"registered {row.name}")
            elif args.align_command == "activate":
                deployment = activate(session, args.name, actor=_actor(), force=args.force)
                session.commit()
                print(f"activated {args.name} (deployment {deployment.id})")
    except ApiError as exc:
        return _fail(exc.message)
    finally:
        engine.dispose()
    return 0


# -- diarize ----------------------------------------------------------------------
def cmd_diarize(args, settings: Settings) -> int:
    import json
    import pathlib

    from app.errors import ApiError
    from app.services import diarization

    path = pathlib.Path(args.file)
    if not path.is_file():
        return _fail(f"no such audio file: {path}")
    services = _services(settings)
    try:
        body = diarization.diarize_wav(
            services, _decode_file(path, settings), num_speakers=args.num_speakers,
            min_speakers=args.min_speakers, max_speakers=args.max_speakers,
            name_against_gallery=args.name_against_gallery)
    except ApiError as exc:
        return _fail(f"{exc.message} {exc.detail}")
    if args.rttm:
        pathlib.Path(args.rttm).write_text(diarization.rttm_text(body, path.stem))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(body, indent=2))
    for seg in body["segments"]:
        who = seg["speaker"]["name"] if seg.get("speaker") else seg["label"]
        print(f"{seg['start']:8.2f} {seg['end']:8.2f}  {who}")
    return 0


def cmd_diarize_eval(args, settings: Settings) -> int:
    import json
    import pathlib

    from app.services.diarization import build_diarizer
    from diarizer.evaluate import evaluate_folder

    folder = pathlib.Path(args.folder)
    if not folder.is_dir():
        return _fail(f"no such folder: {folder}")
    services = _services(settings)
    report = evaluate_folder(build_diarizer(services), folder, args.subset, plot_dir=args.plots,
                             hypothesis_dir=args.hyp_dir)
    if not report["files"]:
        return _fail(f"no audio with a reference RTTM found in {folder}")
    print("| file | speakers ref/hyp | DER c=0 | JER c=0 | DER c=0.25 | JER c=0.25 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in report["files"]:
        print(f"| {row['uri']} | {row['ref_speakers']}/{row['hyp_speakers']} | {row['der@0.0']:.1%} | "
              f"{row['jer@0.0']:.1%} | {row['der@0.25']:.1%} | {row['jer@0.25']:.1%} |")
    totals = report["totals"]
    print(f"| **all** | count right {report['count_accuracy']:.0%} | {totals['der@0.0']:.1%} | "
          f"{totals['jer@0.0']:.1%} | {totals['der@0.25']:.1%} | {totals['jer@0.25']:.1%} |")
    print(f"real-time factor {report['rtf']:.4f} over {report['audio_seconds']:.0f} s of audio")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def cmd_simulate(args, settings: Settings) -> int:
    import pathlib

    from diarizer.simulate import simulate_conversation

    source = pathlib.Path(args.source)
    if not source.is_dir():
        return _fail(f"no such folder: {source}")
    out = pathlib.Path(args.out)
    for index in range(args.conversations):
        speakers = args.speakers[index % len(args.speakers)]
        try:
            conversation = simulate_conversation(source, num_speakers=speakers, num_turns=args.turns,
                                                 overlap_ratio=args.overlap, snr_db=args.snr,
                                                 seed=args.seed + index)
        except ValueError as exc:
            return _fail(str(exc))
        uri = f"sim{index:03d}"
        paths = conversation.write(out, uri)
        print(f"{paths['audio']}  {speakers} speakers, {conversation.duration:.1f} s")
    return 0


def _decode_file(path, settings: Settings):
    from app.errors import ApiError
    from app.services.audio_input import upload_limits
    from speechcore.audio import AudioError, decode_audio

    try:
        return decode_audio(path.read_bytes(), limits=upload_limits(settings)).wav
    except AudioError as exc:
        raise ApiError(exc.http_status, exc.code, exc.message, exc.detail) from exc


def _align_adapt(args, settings: Settings) -> int:
    import dataclasses
    import pathlib

    import numpy as np

    from app.errors import ApiError
    from app.services.registry import activate, register_artifact
    from nessa.adapt import AdaptConfig, adapt_from_pairs

    values = {f.name: getattr(args, f"adapt_{f.name}") for f in dataclasses.fields(AdaptConfig)
              if getattr(args, f"adapt_{f.name}", None) is not None}
    try:
        config = AdaptConfig(**values)
    except ValueError as exc:
        return _fail(str(exc))
    services = _services(settings) if (args.from_gallery or not args.artifact or not args.no_register) else None
    artifact_dir = pathlib.Path(args.artifact) if args.artifact else None
    if artifact_dir is None:
        artifact_dir = pathlib.Path(services.paths.current_path())
    if not (artifact_dir / "artifact.json").is_file():
        return _fail(f"no alignment artifact at {artifact_dir}")
    if args.from_gallery:
        from app.services.adaptation import gallery_pairs
        from nessa.artifact import AlignmentArtifact

        try:
            source, target, speaker = gallery_pairs(services, AlignmentArtifact.load(artifact_dir))
        except ValueError as exc:
            return _fail(str(exc))
    else:
        if not pathlib.Path(args.pairs).is_file():
            return _fail(f"no such pairs file: {args.pairs}")
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
            register_artifact(session, out_dir / adapted.name, actor=_actor())
            if args.activate:
                # an explicit flag: the adapted child of the path in force replaces it
                # without a gate run (recorded as forced in the deployment)
                activate(session, adapted.name, actor=_actor(), force=True)
            session.commit()
    except ApiError as exc:
        return _fail(exc.message)
    print(f"registered{' and activated' if args.activate else ''} {adapted.name}")
    return 0


def _network_config(args):
    """NetworkConfig from the `--<field>` flags that were given (others keep defaults)."""
    import dataclasses

    from nessa.train_network import NetworkConfig

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

    from nessa.train_network import NetworkConfig

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

    from app.model_registry import load_embedder
    from nessa.evaluation import main_args

    for folder in (args.eval_dir, args.anchors_dir):
        if not pathlib.Path(folder).is_dir():
            return _fail(f"evaluation data not found: {folder}")
    try:
        main_args(args, load_embedder(settings.enroll_model), load_embedder(settings.runtime_model))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    return 0


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    settings = settings or Settings()
    parser = argparse.ArgumentParser(prog="nessa", description="Asymmetric speaker enrollment and verification.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--threads", type=int, default=settings.web_threads,
                       help="request threads (default NESSA_WEB_THREADS, %(default)s)")
    serve.add_argument("--with-worker", action="store_true", help="also run a job worker in this process")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (any number, on any host sharing the database)")
    worker.add_argument("--worker-id")
    worker.set_defaults(func=cmd_worker)

    dbp = sub.add_parser("db", help="database schema (Alembic migrations)")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade")
    up.add_argument("revision", nargs="?", default="head")
    down = dbsub.add_parser("downgrade")
    down.add_argument("revision", nargs="?", default="base")
    dbsub.add_parser("current")
    dbp.set_defaults(func=cmd_db)

    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key; the key is the last line printed")
    kc.add_argument("--scope", action="append", required=True, help="enroll, identify or admin (repeatable)")
    kc.add_argument("--name", default="cli")
    kc.add_argument("--expires-in-days", type=int, help="the key stops working after this many days")
    ksub.add_parser("list", help="every key: scopes, state, created, last used (to the minute), expiry")
    kr = ksub.add_parser("revoke", help="revoke a key by its prefix (as `list` shows it)")
    kr.add_argument("prefix")
    keys.set_defaults(func=cmd_keys)

    from nessa.evaluation import add_arguments as add_eval_arguments

    evaluation = sub.add_parser("eval", help="every system on one test corpus, one run, one table")
    add_eval_arguments(evaluation, shared_data_dir=settings.shared_data_dir,
                       cache_dir=settings.cache_dir / "embeddings")
    evaluation.set_defaults(func=cmd_eval)

    diar = sub.add_parser("diarize", help="who spoke when in an audio file")
    diar.add_argument("file")
    diar.add_argument("--rttm", help="write RTTM here")
    diar.add_argument("--json", help="write the JSON result here")
    diar.add_argument("--name-against-gallery", action="store_true",
                      help="name clusters against the enrolled profiles (unknown-N otherwise)")
    diar.add_argument("--num-speakers", type=int)
    diar.add_argument("--min-speakers", type=int)
    diar.add_argument("--max-speakers", type=int)
    diar.set_defaults(func=cmd_diarize)

    deval = sub.add_parser("diarize-eval", help="DER/JER on a folder of audio + reference RTTM (and UEM/.lst)")
    deval.add_argument("folder")
    deval.add_argument("--subset", action="append", help=".lst subset(s), e.g. development, test")
    deval.add_argument("--plots", help="write reference-vs-hypothesis timeline PNGs here")
    deval.add_argument("--hyp-dir", help="write hypothesis RTTMs here")
    deval.add_argument("--json", help="write the full report here")
    deval.set_defaults(func=cmd_diarize_eval)

    sim = sub.add_parser("simulate", help="conversations from <speaker>/<utterance> folders, with reference RTTM")
    sim.add_argument("source")
    sim.add_argument("--out", required=True)
    sim.add_argument("--conversations", type=int, default=20)
    sim.add_argument("--speakers", type=int, nargs="+", default=[2, 3, 4, 5])
    sim.add_argument("--turns", type=int, default=12)
    sim.add_argument("--overlap", type=float, default=0.1, help="fraction of turns that overlap the previous one")
    sim.add_argument("--snr", type=float, help="add noise at this SNR (dB)")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)

    from app.cli_models import add_parser as add_models_parser

    add_models_parser(sub)

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
    from nessa.learning_curve import add_arguments as add_learning_curve_arguments

    curve = asub.add_parser("learning-curve", help="EER against the number of real training speakers, with a trend")
    add_learning_curve_arguments(curve, shared_data_dir=settings.shared_data_dir,
                                 cache_dir=settings.cache_dir / "embeddings")

    import dataclasses

    from nessa.adapt import AdaptConfig

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
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        return _fail(str(exc))
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "alembic.runtime.plugins", "alembic.runtime.migration", "speechbrain.utils.quirks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
