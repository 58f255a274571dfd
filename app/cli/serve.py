"""`nessa serve` and `nessa worker`: the long-running processes."""
from __future__ import annotations

import os
import signal
import threading

from app.cli.common import fail, open_services, safe_url
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--threads", type=int, default=settings.web_threads,
                       help="request threads (default NESSA_WEB_THREADS, %(default)s)")
    serve.add_argument("--workers", type=int, default=settings.web_workers,
                       help="server processes on the port (default NESSA_WEB_WORKERS, %(default)s; 0: one per core)")
    serve.add_argument("--with-worker", action="store_true", help="also run a job worker in this process")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (any number, on any host sharing the database)")
    worker.add_argument("--worker-id")
    worker.set_defaults(func=cmd_worker)


def cmd_serve(args, settings: Settings) -> int:
    from app.web import serving

    settings = settings.replace(host=args.host or settings.host, port=args.port or settings.port)
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    in_process_worker = args.with_worker or settings.in_process_worker
    url = f"http://{settings.host}:{settings.port}"
    print(f"NESSA listening on {url}  ({workers} server process{'es' if workers > 1 else ''}, "
          f"database {safe_url(settings.resolved_database_url)}, job worker "
          f"{'in-process' if in_process_worker else 'separate: run `nessa worker`'})")
    print(f"Create an API key:  .venv/bin/nessa keys create --scope admin   then  "
          f"curl -H 'Authorization: Bearer <key>' {url}/v1/speakers", flush=True)

    def make_app(index: int):
        from app.web.factory import create_app

        services = open_services(settings)
        # the in-process job worker runs in the first server process only
        app = create_app(settings, services=services, start_worker=in_process_worker and index == 0)
        services.gallery.sync()  # load the profile index now rather than in the first request
        return app

    if workers == 1:
        serving.serve(make_app(0), settings, threads=args.threads)
        return 0
    _refuse_unready_schema(settings)  # once, here, rather than in every child
    return serving.serve_processes(make_app, settings, workers, threads=args.threads)


def _refuse_unready_schema(settings: Settings) -> None:
    """Exit with the reason when the database is not at the code's schema. Only the store is
    touched: the parent forks the server processes and must not start models or pools."""
    from app.store import db

    url = settings.resolved_database_url
    head, current = db.head_revision(), db.current_revision(url)
    if current != head:
        raise SystemExit(fail(f"database schema is at {current or 'empty'}, expected {head}: run `nessa db upgrade`"))


def cmd_worker(args, settings: Settings) -> int:
    from app.worker import build_worker

    services = open_services(settings)
    worker = build_worker(services, worker_id=args.worker_id)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"nessa worker {worker.worker_id} polling {safe_url(services.database_url)}", flush=True)
    worker.run_forever(stop)
    return 0
