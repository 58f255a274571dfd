"""`nessa models ...`: the model registry from the command line (same services as the
admin endpoints under /v1/models, /v1/alignments and /v1/deployments)."""
from __future__ import annotations

import json
import pathlib
import threading
import time

from app.cli.common import actor, fail, open_services
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    models = sub.add_parser("models", help="model registry: register, re-embed, evaluate, activate, roll back")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="the path in force, every model version and alignment")
    hist = msub.add_parser("history", help="deployments and the audit log")
    hist.add_argument("--limit", type=int, default=30)
    reg = msub.add_parser("register", help="register an installed model version (new enrollments get its vectors)")
    reg.add_argument("name")
    ret = msub.add_parser("retire", help="retire a model version (deletes its space's vectors) or an alignment")
    ret.add_argument("name")
    ret.add_argument("--alignment", action="store_true", help="NAME is an alignment artifact")
    emb = msub.add_parser("reembed", help="embed every retained enrollment audio with a model (background jobs)")
    emb.add_argument("name")
    emb.add_argument("--bridge", help="alignment that maps the old enrollment space into NAME, for enrollments "
                                      "whose audio was not retained")
    emb.add_argument("--no-wait", action="store_true", help="queue the jobs and return (workers do the rest)")
    emb.add_argument("--workers", type=int, default=1,
                     help="also run this many workers here while waiting (0: rely on `nessa worker` elsewhere)")
    ev = msub.add_parser("evaluate", help="measure an alignment's path against the path in force (same trials)")
    ev.add_argument("alignment")
    ev.add_argument("--eval-dir", help="<speaker>/<utterance> folder (default: ../shared/data/librispeech/test-other)")
    ev.add_argument("--n-enroll", type=int, default=3)
    ev.add_argument("--max-speakers", type=int)
    ev.add_argument("--max-queries", type=int, help="test utterances per speaker")
    ev.add_argument("--crop", type=float, action="append",
                    help="also test crops of this many seconds (default: 2 and 1; whole utterances always)")
    ev.add_argument("--tolerance-eer", type=float, default=0.5, help="EER points the candidate may lose")
    ev.add_argument("--tolerance-top1", type=float, default=1.0, help="top-1 accuracy points it may lose")
    act = msub.add_parser("activate", help="put an alignment's path in force (gated by its evaluation)")
    act.add_argument("alignment")
    act.add_argument("--force", action="store_true", help="override the gate (recorded in the audit log)")
    msub.add_parser("rollback", help="go back to the path in force before the current one")
    msub.add_parser("calibrate", help="fit the calibration on the gallery's own enrollments now "
                                      "(what the background job does when the gallery changes)")
    models.set_defaults(func=cmd_models)


def _print_overview(overview: dict) -> None:
    active = overview["active"]
    if active:
        print(f"in force (deployment {active['id']}, {active['action']} by {active['actor']} at "
              f"{active['created_at']}):\n  enrollment space {active['enrollment_space']}, runtime model "
              f"{active['runtime_model']}, alignment {active['alignment']}")
    else:
        print("no runtime path in force")
    print("models:")
    for m in overview["models"]:
        bridged = f", {m['bridged_profiles']} bridged" if m["bridged_profiles"] else ""
        print(f"  {m['name']:<22} {m['role']:<8} {m['dim']:>4}-d  {m['state']:<10} {m['profiles']} profiles{bridged}")
    print("alignments:")
    for a in overview["alignments"]:
        passed = "" if not a["evaluation"] else f"  (evaluation {a['evaluation']['id']}: " \
            f"{'passed' if a['evaluation']['passed'] else 'FAILED'})"
        print(f"  {a['name']:<48} {a['source_version']} -> {a['target_version']}  {a['state']}{passed}")


def _print_evaluation(result: dict) -> None:
    rows = [("candidate", result["candidate"])] + ([("in force", result["baseline"])] if result["baseline"] else [])
    print(f"evaluation {result['id']} on {result['eval_set']['path']} ({result['eval_set']['speakers']} speakers, "
          f"profiles from {result['eval_set']['n_enroll']} utterances):")
    print("| path | alignment | condition | EER % | top-1 % | identified at threshold % | queries |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, figures in rows:
        for condition, f in figures["conditions"].items():
            print(f"| {label} | {figures['alignment']} | {condition} | {f['eer']:.2f} | {f['top1']:.1f} | "
                  f"{f['identified_at_threshold']:.1f} | {f['queries']} |")
    tol = result["tolerance"]
    print(f"gate (EER +{tol['eer_points']} points, top-1 -{tol['top1_points']} points): "
          f"{'PASSED' if result['passed'] else 'FAILED'}")


def _schedule_calibration(services) -> None:
    from app.services.gallery_calibration import schedule_if_due

    if schedule_if_due(services):
        print("queued a refit of the gallery calibration for the path now in force")


def _print_calibration(fit: dict) -> None:
    print(f"gallery calibration {fit['fit_id']} for {fit['alignment']}: {fit['n_profiles']} profiles, "
          f"{fit['n_enrollments']} enrollments as queries")
    if fit["source"] == "shipped":
        print("  too few profiles or trials for a fit: decisions keep the shipped calibration")
    for path, m in fit["paths"].items():
        shipped, gallery = m["figures"]["shipped"], m["figures"]["gallery"]
        rates = ", ".join(f"{name}: FAR {_pct(shipped[name]['far'])} -> {_pct(gallery[name]['far'])}, "
                          f"FRR {_pct(shipped[name]['frr'])} -> {_pct(gallery[name]['frr'])}" for name in shipped)
        print(f"  {path}: llr -> min({m['scale']:.3f} * llr + {m['bias']:.3f}, llr) from {m['n_nontargets']} "
              f"impostor and {m['n_targets']} genuine trials; in-domain {rates}")


def _pct(rate) -> str:
    return "n/a" if rate is None else f"{100 * rate:.2f}%"


def _wait_for_job(services, job_id: int, *, workers: int) -> dict:
    """Show the campaign's progress; run `workers` job workers here meanwhile."""
    from tqdm import tqdm

    from app.store import models
    from app.store.job_queue import jobs
    from app.worker import build_worker

    stop = threading.Event()
    threads = []
    for i in range(workers):
        worker = build_worker(services, worker_id=f"cli-{i}-{time.time_ns()}")
        thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)
    try:
        with tqdm(total=100, unit="%", desc=f"job {job_id}") as bar:
            while True:
                with services.session() as session:
                    job = session.get(models.Job, job_id)
                    children = jobs.children_summary(session, job_id)
                    status, progress, result, error = job.status, job.progress, job.result, job.error
                done = 100 if status == "succeeded" else int(round(100 * (progress or 0.0)))
                bar.update(max(0, done - bar.n))
                if children:
                    bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(children.items())))
                if status in ("succeeded", "failed"):
                    return {"status": status, "result": result, "error": error}
                time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def cmd_models(args, settings: Settings) -> int:
    from app.services import registry

    services = open_services(settings)
    try:
        command = args.models_command
        with services.session() as session:
            if command == "list":
                _print_overview(registry.models_overview(session))
                return 0
            if command == "history":
                print(json.dumps(registry.history(session, args.limit), indent=2))
                return 0
            if command == "register":
                row = registry.register_model(session, args.name, actor=actor())
                session.commit()
                print(f"registered {row.name} ({row.role}, {row.dim}-d): new enrollments are embedded with it; "
                      f"run `nessa models reembed {row.name}` for the existing ones")
                return 0
            if command == "retire":
                if args.alignment:
                    registry.retire_alignment(session, args.name, actor=actor())
                else:
                    registry.retire_model(session, args.name, actor=actor())
                session.commit()
                print(f"retired {args.name}")
                return 0
            if command == "activate":
                deployment = registry.activate(session, args.alignment, actor=actor(), force=args.force)
                session.commit()
                print(f"deployment {deployment.id}: {deployment.runtime_model} -> {deployment.enrollment_space} "
                      f"through {deployment.alignment} is in force{' (gate overridden)' if args.force else ''}")
                _schedule_calibration(services)
                return 0
            if command == "rollback":
                deployment = registry.rollback(session, actor=actor())
                session.commit()
                print(f"rolled back: deployment {deployment.id} puts {deployment.alignment} in force again")
                _schedule_calibration(services)
                return 0
        if command == "calibrate":
            from app.services.gallery_calibration import fit_gallery

            _print_calibration(fit_gallery(services, actor=actor()))
            return 0
        if command == "reembed":
            from app.services.reembed import start_reembed

            job = start_reembed(services, args.name, bridge=args.bridge, actor=actor())
            print(f"queued re-embedding job {job.id} (progress: GET /v1/jobs/{job.id})")
            if args.no_wait:
                return 0
            outcome = _wait_for_job(services, job.id, workers=max(0, args.workers))
            if outcome["status"] != "succeeded":
                return fail(f"re-embedding failed: {outcome['error']}")
            print(json.dumps(outcome["result"]))
            return 0
        if command == "evaluate":
            from app.services.model_jobs import default_eval_dir
            from app.services.path_eval import evaluate_alignment

            folder = pathlib.Path(args.eval_dir) if args.eval_dir else default_eval_dir(settings)
            crops = (None, *args.crop) if args.crop else (None, 2.0, 1.0)
            result = evaluate_alignment(services, args.alignment, folder=folder, actor=actor(),
                                        n_enroll=args.n_enroll, crops=crops, max_speakers=args.max_speakers,
                                        max_queries=args.max_queries,
                                        tolerance={"eer_points": args.tolerance_eer,
                                                   "top1_points": args.tolerance_top1})
            _print_evaluation(result)
            return 0
    finally:
        services.close()
    return fail(f"unknown command {command}")
