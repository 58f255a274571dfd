"""`nessa serve` and `nessa worker`: the long-running processes."""
from __future__ import annotations

import signal
import threading

from app.cli.common import open_services, safe_url
from app.settings import Settings


def register(sub, settings: Settings) -> None:
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


def cmd_serve(args, settings: Settings) -> int:
    from app.web import serving
    from app.web.factory import create_app

    settings = settings.replace(host=args.host or settings.host, port=args.port or settings.port)
    services = open_services(settings)
    app = create_app(settings, services=services, start_worker=args.with_worker or settings.in_process_worker)
    services.gallery.sync()  # load the profile index now rather than in the first request
    url = f"http://{settings.host}:{settings.port}"
    print(f"NESSA listening on {url}  (database {safe_url(services.database_url)}, "
          f"worker {'in-process' if args.with_worker else 'separate: run `nessa worker`'})")
    print(f"Create an API key:  .venv/bin/nessa keys create --scope admin   then  "
          f"curl -H 'Authorization: Bearer <key>' {url}/v1/speakers", flush=True)
    serving.serve(app, settings, threads=args.threads)
    return 0


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
