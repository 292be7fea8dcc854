"""Telemetry for the real-time controller: JSON snapshots on a PUB socket, optional Prometheus.

On the control loop only `on_tick` runs: it copies the tick record's stage durations and
tick-start jitter (controllers/core.py) into rings of its own, allocated once at `on_start` (two
small copies). A background thread wakes `1 / publish_hz` times a second, reads the controller's
counters and the newest rows of those rings (written without locks; a row torn by a concurrent
write skews one sample of one snapshot, nothing more), computes percentiles and log2 histograms
over that window, and publishes one small JSON object. `policyrt top ENDPOINT` renders it.

PUB/SUB fits telemetry where it does not fit control: a viewer that joins late or falls behind
just misses snapshots, and the controller never waits for one (ZMQ_SNDHWM small, no blocking).

Snapshot fields (docs/SAFETY.md, "Telemetry"): `time`, `rate_hz`, `robots`, `counters` (the
controller's `counters`), `window_ticks`, `stages` ({stage: {p50_us, p99_us, max_us}} over the
window), `jitter` (tick-start jitter p50/p99/max over the window, us), `histograms`
({stage: [counts per bucket]} with bucket upper bounds `bucket_us`).

Board-side module: standard library, numpy and pyzmq only; prometheus_client optional.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import zmq

from policyrt.link import limit_message_size

log = logging.getLogger(__name__)

# Histogram buckets: upper bounds in microseconds, powers of two from 8 us to ~65 ms, then +inf.
BUCKET_US = tuple(float(2**k) for k in range(3, 17)) + (float("inf"),)
_BUCKET_NS = np.array(BUCKET_US[:-1]) * 1e3


def _last_rows(ring: np.ndarray, count: int, window: int) -> np.ndarray:
    n = min(count, len(ring), window)
    if n <= 0:
        return ring[:0]
    idx = (np.arange(count - n, count)) % len(ring)
    return ring[idx]


RING_TICKS = 1 << 14  # ticks kept for snapshots and the Prometheus histograms (16 s at 1 kHz)


def snapshot(run, stage_rows: np.ndarray, jitter: np.ndarray) -> dict:
    """A JSON-able summary of the run (controllers.core.RunInfo) over the given ticks: stage
    durations int64 ns [ticks, stages] and tick-start jitter ns [ticks]."""
    rows = stage_rows
    stages, hists = {}, {}
    for i, name in enumerate(run.stages):
        col = rows[:, i] if len(rows) else rows.reshape(0)
        if len(col):
            p50, p99 = np.percentile(col, [50, 99]) / 1e3
            stages[name] = {
                "p50_us": round(float(p50), 1),
                "p99_us": round(float(p99), 1),
                "max_us": round(float(col.max()) / 1e3, 1),
            }
        hists[name] = np.bincount(np.searchsorted(_BUCKET_NS, col), minlength=len(BUCKET_US)).tolist()
    jit = {}
    if len(jitter):
        p50, p99 = np.percentile(jitter, [50, 99]) / 1e3
        jit = {
            "p50_us": round(float(p50), 1),
            "p99_us": round(float(p99), 1),
            "max_us": round(float(jitter.max()) / 1e3, 1),
        }
    return {
        "time": time.time(),
        "rate_hz": run.rate_hz,
        "robots": list(run.robots),
        "counters": run.counters(),
        "window_ticks": int(len(rows)),
        "stages": stages,
        "jitter": jit,
        "histograms": hists,
        "bucket_us": [b if b != float("inf") else None for b in BUCKET_US],
    }


class Telemetry:
    """Publishes snapshots of a running controller; pass to RealtimeController(telemetry=...)."""

    def __init__(
        self,
        pub_endpoint: str | None = None,
        *,
        prometheus_port: int | None = None,
        publish_hz: float = 4.0,
        window: int = 1000,
        context: zmq.Context | None = None,
    ):
        self.pub_endpoint, self.publish_hz, self.window = pub_endpoint, publish_hz, window
        self._context = context
        self._prom = _Prometheus(prometheus_port) if prometheus_port else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.last: dict | None = None
        self.count = 0  # ticks seen

    def on_start(self, run, record) -> None:
        """Allocate the rings and start publishing (run: controllers.core.RunInfo)."""
        self._run = run
        self._stages = np.zeros((RING_TICKS, len(run.stages)), np.int64)
        self._jitter = np.zeros(RING_TICKS, np.int64)
        self.count = 0
        self._stop.clear()
        ctx = self._context or zmq.Context.instance()
        self._sock = None
        if self.pub_endpoint:
            self._sock = ctx.socket(zmq.PUB)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.SNDHWM, 10)
            limit_message_size(self._sock)  # a subscriber's (un)subscribe frames are received too
            self._sock.bind(self.pub_endpoint)
            log.info("telemetry on %s (view it with `policyrt top %s`)", self.pub_endpoint, self.pub_endpoint)
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = 1.0 / self.publish_hz
        while not self._stop.wait(period):
            self.publish()
        self.publish()  # the final state, so a viewer sees how the run ended

    def on_tick(self, record) -> None:
        i = self.count % RING_TICKS
        self._stages[i] = record.stage_ns
        self._jitter[i] = record.jitter_ns
        self.count += 1

    def publish(self) -> None:
        try:
            count = self.count
            rows = _last_rows(self._stages, count, self.window)
            snap = snapshot(self._run, rows, _last_rows(self._jitter, count, self.window))
        except Exception as exc:  # telemetry must never take the controller down
            log.error("telemetry snapshot failed: %s", exc)
            return
        self.last = snap
        if self._sock is not None:
            try:
                self._sock.send(json.dumps(snap).encode(), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if self._prom is not None:
            self._prom.update(snap, self._stages, count, self._run.stages)
        self.published += 1

    def on_close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close(linger=0)


class _Prometheus:
    """Counters, gauges and stage-latency histograms on an HTTP endpoint (prometheus_client)."""

    def __init__(self, port: int):
        try:
            import prometheus_client as prom
        except ImportError:
            raise RuntimeError(
                "--prometheus-port needs the prometheus-client package: pip install 'policyrt[telemetry]' "
                "(or leave the option out; the PUB telemetry works without it)"
            ) from None
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.ticks = prom.Gauge("policyrt_ticks", "control ticks run", registry=r)
        self.misses = prom.Gauge(
            "policyrt_deadline_misses", "ticks whose inference ended after the deadline", registry=r
        )
        self.skipped = prom.Gauge("policyrt_skipped_ticks", "ticks skipped after an overrun", registry=r)
        self.fallbacks = prom.Gauge(
            "policyrt_fallbacks", "slot-ticks sent the fallback action", ["reason"], registry=r
        )
        self.estops = prom.Gauge("policyrt_estops", "e-stop latches", registry=r)
        self.state_resets = prom.Gauge(
            "policyrt_state_resets", "slot policy states reset after a non-finite action", registry=r
        )
        self.rejected = prom.Gauge("policyrt_rejected_frames", "rejected frames", ["kind"], registry=r)
        buckets = [b / 1e6 for b in BUCKET_US[:-1]] + [float("inf")]
        self.stage = prom.Histogram(
            "policyrt_stage_seconds", "per-tick stage time", ["stage"], buckets=buckets, registry=r
        )
        self._seen = 0
        prom.start_http_server(port, registry=r)
        log.info("Prometheus metrics on http://0.0.0.0:%d/metrics", port)

    def update(self, snap: dict, ring: np.ndarray, count: int, stages: tuple[str, ...]) -> None:
        c = snap["counters"]
        self.ticks.set(c["ticks"])
        self.misses.set(c["deadline_misses"])
        self.skipped.set(c["skipped_ticks"])
        self.estops.set(c["estops"])
        self.state_resets.set(c["state_resets"])
        for reason, n in c["fallbacks"].items():
            self.fallbacks.labels(reason).set(n)
        for kind, n in c["rejected"].items():
            self.rejected.labels(kind).set(n)
        rows = _last_rows(ring, count, min(count - self._seen, len(ring)))
        self._seen = count
        for i, name in enumerate(stages):
            child = self.stage.labels(name)
            for v in rows[:, i]:
                child.observe(v / 1e9)
