"""Load on one host: the real server under concurrent identify requests, over loopback.

    .venv/bin/python -m bench.load_bench [--seconds 15] [--clients 1 4 8] [--json var/bench/load_bench.json]

Sets up a deployment in a temporary folder as an operator would (`nessa db upgrade` on a
fresh SQLite database, `nessa keys create`, `nessa serve` on a free loopback port, a
`nessa worker` while LibriSpeech test-other speakers are enrolled through the API), then:

* scaling: POST /v1/identify with real 2-4 s crops from 1, 4 and 8 client threads, each
  for a bounded time: requests per second, p50/p99 latency, the CPU cores the server
  process used (utime + stime from /proc/<pid>/stat over wall time) and the cores the
  host left idle (/proc/stat; on a shared machine, what other load left unused);
* interference: the 4-client run again with one attacker looping a 1,244-byte WAV that
  declares 1 Hz (600 s of "audio") against identify; the normal clients' median latency
  with the attacker over without it (measured just before, same run; target <= 3).

Requests go to 127.0.0.1 only, and every loop is bounded in time and in count.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import pathlib
import platform
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import soundfile as sf

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / "var" / "bench" / "load_bench.json"
HOST = "127.0.0.1"
ENROLLED_SPEAKERS = 5
ENROLL_UTTERANCES = 3
QUERY_CROPS = 40
#: per client thread and phase, whatever the time limit
MAX_REQUESTS_PER_CLIENT = 5000
REQUEST_TIMEOUT_S = 120
ATTACK_CLIENTS = 4
TARGET_SLOWDOWN = 3.0


# -- the deployment ----------------------------------------------------------------
def _nessa(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _start(args: list[str], env: dict, log_path: pathlib.Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # own process group: stopped with everything it started
        return subprocess.Popen(_nessa(*args), cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


@contextlib.contextmanager
def deployment(threads: int | None, workers: int = 1):
    """(port, API key, server pid) of a `nessa serve` on a fresh database; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="nessa-load-") as tmp:
        tmp = pathlib.Path(tmp)
        env = {**os.environ, "NESSA_DATA_DIR": str(tmp / "data"), "NESSA_DATABASE_URL": "",
               "NESSA_IN_PROCESS_WORKER": "false", "PYTHONUNBUFFERED": "1"}
        subprocess.run(_nessa("db", "upgrade"), cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=300)
        created = subprocess.run(_nessa("keys", "create", "--scope", "admin", "--name", "load-bench"), cwd=REPO_ROOT,
                                 env=env, check=True, capture_output=True, text=True, timeout=300)
        key = created.stdout.strip().splitlines()[-1]
        port = _free_port()
        serve_args = (["serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
                      + (["--threads", str(threads)] if threads else []))
        server = _start(serve_args, env, tmp / "serve.log")
        worker = None
        try:
            _wait_for_health(server, port, tmp / "serve.log")
            worker = _start(["worker"], env, tmp / "worker.log")
            yield port, key, server.pid, worker
        finally:
            if worker is not None:
                _stop(worker)
            _stop(server)


def _wait_for_health(server: subprocess.Popen, port: int, log_path: pathlib.Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("nessa serve exited:\n" + log_path.read_text(errors="replace"))
        with contextlib.suppress(OSError, http.client.HTTPException):
            if Client(port, "").request("GET", "/v1/health")[0] == 200:
                return
        time.sleep(0.2)
    raise SystemExit("nessa serve never answered")


# -- HTTP ----------------------------------------------------------------------------
class Client:
    """One keep-alive connection to the server (reopened after an error)."""

    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {"Authorization": f"Bearer {self.key}"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.connection is None:
            self.connection = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, data = self.request(method, path, json.dumps(body).encode() if body else None,
                                    "application/json" if body else None)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def multipart(audio: bytes, filename: str = "audio.wav") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + audio + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def one_hz_wav(seconds: int = 600) -> bytes:
    """A PCM16 mono WAV declaring 1 sample per second: ``seconds`` of "audio" in
    44 + 2 * seconds bytes (1,244 for 600 s), which the service resamples to 16 kHz."""
    samples = (np.random.default_rng(0).standard_normal(seconds) * 3000).astype("<i2").tobytes()
    header = (b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVE"
              + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 1, 2, 2, 16)
              + b"data" + struct.pack("<I", len(samples)))
    return header + samples


# -- the gallery and the queries -------------------------------------------------------
def enroll_and_make_queries(client: Client, root: pathlib.Path, seed: int = 0) -> list[bytes]:
    """Enroll ENROLLED_SPEAKERS speakers (waiting for their jobs); return identify bodies:
    2-4 s crops of their other utterances and of two speakers never enrolled."""
    speakers = sorted(p for p in root.iterdir() if p.is_dir())
    jobs, query_files = [], []
    for index, speaker_dir in enumerate(speakers[:ENROLLED_SPEAKERS + 2]):
        files = sorted(speaker_dir.glob("*.flac"))
        if index < ENROLLED_SPEAKERS:
            speaker = client.json("POST", "/v1/speakers", {"name": f"speaker {speaker_dir.name}"})
            chosen = [f for f in files if sf.info(str(f)).duration >= 4.0][:ENROLL_UTTERANCES]
            for f in chosen:
                body, content_type = multipart(f.read_bytes(), f.name)
                status, data = client.request("POST", f"/v1/speakers/{speaker['id']}/enrollments", body, content_type)
                if status != 202:
                    raise RuntimeError(f"enrollment of {f.name}: {status} {data[:300]!r}")
                jobs.append(json.loads(data)["job"]["id"])
            files = [f for f in files if f not in chosen]
        query_files += files
    _wait_for_jobs(client, jobs)
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(QUERY_CROPS):
        wav, sr = sf.read(str(query_files[i % len(query_files)]), dtype="float32")
        n = int(rng.uniform(2.0, 4.0) * sr)
        start = int(rng.integers(0, max(1, len(wav) - n)))
        buffer = io.BytesIO()
        sf.write(buffer, wav[start:start + n], sr, format="WAV", subtype="PCM_16")
        bodies.append(buffer.getvalue())
    return bodies


def _wait_for_jobs(client: Client, job_ids: list[int], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    for job_id in job_ids:
        while (status := client.json("GET", f"/v1/jobs/{job_id}")["status"]) not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"enrollment job {job_id} did not finish in {timeout_s:.0f} s")
            time.sleep(0.2)
        if status != "succeeded":
            raise RuntimeError(f"enrollment job {job_id} {status}")


# -- load phases -----------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its running children (the server processes of
    ``nessa serve --workers``), from /proc/<pid>/stat."""
    total = 0.0
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _idle_cpu_seconds() -> float:
    """Idle (and I/O wait) time of all CPUs together, from /proc/stat: what the server
    could have used but nobody did."""
    fields = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _client_loop(port: int, key: str, bodies: list[tuple[bytes, str]], offset: int, start: threading.Barrier,
                 deadline_box: list[float], out: dict) -> None:
    client = Client(port, key)
    latencies, statuses = [], {}
    start.wait()
    deadline = deadline_box[0]
    for i in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= deadline:
            break
        body, content_type = bodies[(offset + i) % len(bodies)]
        t0 = time.perf_counter()
        try:
            status, _ = client.request("POST", "/v1/identify", body, content_type)
        except (OSError, http.client.HTTPException):
            status = "error"
        latencies.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1
    client.close()
    out["latencies"], out["statuses"] = latencies, statuses


def run_phase(port: int, key: str, server_pid: int, bodies: list[tuple[bytes, str]], clients: int,
              seconds: float, attacker_body: tuple[bytes, str] | None = None) -> dict:
    """``clients`` threads loop over ``bodies`` for ``seconds``; optionally one attacker
    thread loops ``attacker_body``. Figures are of the normal clients only."""
    barrier = threading.Barrier(clients + 1 + (attacker_body is not None))
    deadline_box = [0.0]
    results = [{} for _ in range(clients)]
    threads = [threading.Thread(target=_client_loop, args=(port, key, bodies, 7 * c, barrier, deadline_box,
                                                            results[c])) for c in range(clients)]
    attack: dict = {}
    if attacker_body is not None:
        threads.append(threading.Thread(target=_client_loop, args=(port, key, [attacker_body], 0, barrier,
                                                                    deadline_box, attack)))
    for thread in threads:
        thread.start()
    cpu0, idle0, wall0, own0 = _cpu_seconds(server_pid), _idle_cpu_seconds(), time.monotonic(), time.process_time()
    deadline_box[0] = wall0 + seconds
    barrier.wait()
    for thread in threads[:clients]:
        thread.join()
    wall, cpu, own = time.monotonic() - wall0, _cpu_seconds(server_pid) - cpu0, time.process_time() - own0
    idle = _idle_cpu_seconds() - idle0
    for thread in threads[clients:]:
        thread.join()  # the attacker's last request, so that it does not spill into the next phase
    latencies = np.concatenate([r["latencies"] for r in results]) * 1e3
    statuses: dict = {}
    for r in results:
        for status, count in r["statuses"].items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    phase = {"clients": clients, "attacker": attacker_body is not None, "wall_s": wall, "requests": len(latencies),
             "statuses": statuses, "req_per_s": len(latencies) / wall,
             "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
             "mean_ms": float(latencies.mean()),
             "server_cores": cpu / wall, "client_cores": own / wall, "idle_cores": idle / wall}
    if attack:
        phase["attacker_requests"] = len(attack["latencies"])
        phase["attacker_statuses"] = {str(k): v for k, v in attack["statuses"].items()}
        phase["attacker_p50_ms"] = float(np.median(attack["latencies"]) * 1e3) if attack["latencies"] else None
    return phase


def run(seconds: float = 15.0, client_counts=(1, 4, 8), threads: int | None = None,
        shared_data: pathlib.Path | None = None, workers: int = 1) -> dict:
    from app.settings import Settings

    root = (shared_data or Settings.from_env().shared_data_dir) / "librispeech" / "test-other"
    if not root.is_dir():
        raise SystemExit(f"bench needs real speech at {root} (../shared/data beside the repository)")
    load_before = os.getloadavg()
    with deployment(threads, workers) as (port, key, server_pid, worker):
        client = Client(port, key)
        bodies = [multipart(b) for b in enroll_and_make_queries(client, root)]
        _stop(worker)  # enrollment done: the server alone on its cores
        run_phase(port, key, server_pid, bodies, max(client_counts), 3.0)  # warm every request thread
        # the interference baseline runs last of the scaling phases, just before the attack
        order = sorted(client_counts, key=lambda c: (c == ATTACK_CLIENTS, c))
        phases = {c: run_phase(port, key, server_pid, bodies, c, seconds) for c in order}
        if ATTACK_CLIENTS not in phases:
            phases[ATTACK_CLIENTS] = run_phase(port, key, server_pid, bodies, ATTACK_CLIENTS, seconds)
        attacked = run_phase(port, key, server_pid, bodies, ATTACK_CLIENTS, seconds, multipart(one_hz_wav()))
    baseline = phases[ATTACK_CLIENTS]
    return {"date": dt.datetime.now().isoformat(timespec="minutes"), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "seconds_per_phase": seconds,
            "server_threads": threads, "server_processes": workers, "attack_wav_bytes": len(one_hz_wav()),
            "scaling": [phases[c] for c in sorted(client_counts)],
            "interference": {"without": baseline, "with": attacked,
                             "p50_ratio": attacked["p50_ms"] / baseline["p50_ms"],
                             "mean_ratio": attacked["mean_ms"] / baseline["mean_ms"], "target_ratio": TARGET_SLOWDOWN}}


def format_report(result: dict) -> str:
    lines = [f"### Load on one host: POST /v1/identify over loopback, 2-4 s queries, "
             f"{result.get('server_processes', 1)} server process(es), "
             f"{result['seconds_per_phase']:.0f} s per run ({result['cpus']} CPUs, load average before "
             f"{result['load_average_before'][0]:.2f})", "",
             "| clients | attacker | req/s | p50 ms | p99 ms | server cores | client cores | idle cores | non-200 |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    interference = result["interference"]
    baseline = [] if interference["without"] in result["scaling"] else [interference["without"]]
    for phase in result["scaling"] + baseline + [interference["with"]]:
        failed = sum(v for k, v in phase["statuses"].items() if k != "200")
        lines.append(f"| {phase['clients']} | {'yes' if phase['attacker'] else 'no'} | {phase['req_per_s']:.1f} | "
                     f"{phase['p50_ms']:.0f} | {phase['p99_ms']:.0f} | {phase['server_cores']:.2f} | "
                     f"{phase['client_cores']:.2f} | {phase['idle_cores']:.2f} | {failed} |")
    attacked = interference["with"]
    lines += ["", f"Attacker ({result['attack_wav_bytes']}-byte WAV at 1 Hz): {attacked['attacker_requests']} "
              f"requests, statuses {attacked['attacker_statuses']}, p50 {attacked['attacker_p50_ms'] or 0:.0f} ms.",
              f"Normal clients with the attacker / without (same run): p50 latency {interference['p50_ratio']:.2f} "
              f"(target <= {interference['target_ratio']:.0f}), mean latency {interference['mean_ratio']:.2f}; "
              f"req/s {attacked['req_per_s']:.1f} vs {interference['without']['req_per_s']:.1f}."]
    scaling = {p["clients"]: p for p in result["scaling"]}
    if 1 in scaling and len(scaling) > 1:
        top = max(scaling)
        lines.append(f"Throughput at {top} clients / 1 client: {scaling[top]['req_per_s'] / scaling[1]['req_per_s']:.2f}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, help="server request threads (default: the server's own)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="server processes (nessa serve --workers); several: one deployment each, "
                             "compared with the first in the same run")
    parser.add_argument("--json", type=pathlib.Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    results = []
    for workers in args.workers:
        results.append(run(args.seconds, args.clients, args.threads, workers=workers))
        print(format_report(results[-1]) + "\n", flush=True)
    if len(results) > 1:
        best = [max(p["req_per_s"] for p in r["scaling"]) for r in results]
        print("Best req/s by server processes (ratio to the first, same run): " + ", ".join(
            f"{w}: {b:.1f} ({b / best[0]:.2f})" for w, b in zip(args.workers, best)))
    result = results[0] if len(results) == 1 else {"runs": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
