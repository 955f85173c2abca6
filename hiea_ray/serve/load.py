"""A bounded HTTP load generator for the Serve app (tests and ``benchmarks/serve_load.py``).

A fixed list of request bodies, ``concurrency`` client threads, a time cap: it stops by itself.
A request that fails (connection error, 5xx, 408 / 429 / 503 backpressure) is retried with
exponential backoff up to ``retries`` times; it is *lost* only when every try failed. Latency is
per request, first send to final answer (retries included).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def post(session, url: str, body: dict, retries: int = 6, backoff_s: float = 0.1, timeout_s: float = 120.0):
    """(status, json or None, tries, failures) of one request with retries; a request whose every
    try failed returns the last status (-1: no answer at all)."""
    import requests

    failures, delay, last = 0, backoff_s, None
    for attempt in range(retries + 1):
        try:
            r = session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=timeout_s)
            if r.status_code not in RETRY_STATUS:
                return r.status_code, r.json(), attempt + 1, failures
            last = r.status_code
        except (requests.ConnectionError, requests.Timeout):
            last = None
        failures += 1
        if attempt < retries:
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
    return (last if last is not None else -1), None, retries + 1, failures


def _counts(sent) -> dict:
    out: dict = {}
    for r in sent:
        out[str(r[0])] = out.get(str(r[0]), 0) + 1
    return out


def run_load(url: str, bodies: list[dict], concurrency: int, max_seconds: float, retries: int = 10,
             on_start=None) -> dict:
    """Sends ``bodies`` to ``url`` with ``concurrency`` threads until done or ``max_seconds`` pass
    (requests not yet started then are counted as not sent). ``on_start(i)`` runs before request i
    (fault injection). Returns counts, latency percentiles (ms), requests/s and each answer."""
    import requests

    n = len(bodies)
    results: list = [None] * n
    lat = np.full(n, np.nan)
    lock = threading.Lock()
    nxt = [0]
    deadline = time.perf_counter() + max_seconds
    local = threading.local()

    def worker():
        if not hasattr(local, "s"):
            local.s = requests.Session()
        while True:
            with lock:
                i = nxt[0]
                if i >= n or time.perf_counter() > deadline:
                    return
                nxt[0] += 1
            if on_start is not None:
                on_start(i)
            t0 = time.perf_counter()
            results[i] = post(local.s, url, bodies[i], retries)
            lat[i] = 1000 * (time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    sent = [r for r in results if r is not None]
    ok = [r for r in sent if 200 <= r[0] < 300]
    done = lat[~np.isnan(lat)]
    pct = (lambda q: round(float(np.percentile(done, q)), 2) if len(done) else None)  # noqa: E731
    return {
        "requests": n, "sent": len(sent), "not_sent": n - len(sent), "ok": len(ok),
        "lost": sum(1 for r in sent if r[0] == -1 or r[0] in RETRY_STATUS), "status_counts": _counts(sent),
        "client_errors": sum(1 for r in sent if 400 <= r[0] < 500),
        "failed_tries": sum(r[3] for r in sent), "concurrency": concurrency, "wall_s": round(wall, 3),
        "rps": round(len(ok) / max(wall, 1e-9), 2), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "p50_ms_by_status": {str(c): round(float(np.median([lat[i] for i, r in enumerate(results) if r is not None and r[0] == c])), 2)
                             for c in sorted({r[0] for r in sent})},
        "answers": [r[1] if r is not None else None for r in results],
    }
