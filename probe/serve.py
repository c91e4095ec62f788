"""`probe serve`: run the catalog on an interval and expose the verdicts as Prometheus metrics.

In the spirit of blackbox_exporter, but the probe decides when to measure (a censor's verdict
takes seconds to minutes to establish, too slow for a scrape): one process runs the schedule
and answers `GET /metrics` from the latest finished run, on its own registry. Metrics:

    probe_status{platform,feature,target,name,reason}    0 ok, 1 degraded, 2 blocked, 3 inconclusive
    probe_success{platform,feature,target,name}           1 when the target is ok, else 0
    probe_feature_status{platform,feature,reason}         same coding, per feature
    probe_platform_status{platform,reason}                same coding, per platform
    probe_network_status{reason}                          same coding, from the controls
    probe_rtt_seconds / probe_throughput_bits_per_second / probe_loss_ratio {platform,feature,target,name}
    probe_call_mos{platform,feature,target,name}         a call-like flow's estimated MOS (1-4.5)
    probe_run_duration_seconds, probe_last_run_timestamp_seconds, probe_run_interrupted,
    probe_runs_total

One series per target with the status as its value (not one-hot per status) keeps cardinality
at one per target; the `reason` label changes with the verdict, so alert on the value
(`probe_status >= 2`) and read the reason from the label. Controls appear with
platform="(control)". A target whose RTT, throughput or loss was not measured has no such series.
Serving binds to loopback unless told otherwise: the page tells anyone who can reach it which
platforms are blocked from this network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from probe.classify.udp import call_flow
from probe.classify.udp import quality as flow_quality
from probe.errors import HistoryError
from probe.history import CONTROL
from probe.metrics import metrics_of
from probe.results import Run, TargetResult

STATUS_VALUE = {"ok": 0, "degraded": 1, "blocked": 2, "inconclusive": 3}
READ_TIMEOUT = 5.0  # a client gets this long to send its request head
MAX_HEAD = 16 * 1024


@dataclass(eq=False)  # the registry keys collectors by identity
class Exporter:
    """The latest finished run, turned into metric families at each scrape."""

    run: Run | None = None
    duration: float | None = None
    finished: float | None = None
    runs: int = 0
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))

    def __post_init__(self) -> None:
        self.registry.register(self)

    def update(self, run: Run) -> None:
        self.run = run
        self.runs += 1
        start, end = _epoch(run.started_at), _epoch(run.finished_at)
        self.finished = end if end is not None else time.time()
        self.duration = end - start if start is not None and end is not None else None

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily("probe_runs", "Runs finished since the exporter started.")
        runs.add_metric([], self.runs)
        yield runs
        if self.run is None:
            return
        run = self.run
        targets = ["platform", "feature", "target", "name"]
        status = GaugeMetricFamily(
            "probe_status", "Target verdict: 0 ok, 1 degraded, 2 blocked, 3 inconclusive.",
            labels=[*targets, "reason"])
        success = GaugeMetricFamily("probe_success", "1 when the target is ok.", labels=targets)
        rtt = GaugeMetricFamily("probe_rtt_seconds", "Median round-trip time.", labels=targets)
        rate = GaugeMetricFamily("probe_throughput_bits_per_second",
                                 "Median HTTP transfer rate.", labels=targets)
        loss = GaugeMetricFamily("probe_loss_ratio", "UDP requests unanswered / sent.",
                                 labels=targets)
        mos = GaugeMetricFamily("probe_call_mos", "How a call over the path would sound: the "
                                "E-model's MOS of a call-like flow (1-4.5).", labels=targets)
        seen: set[tuple[str, ...]] = set()
        for target in [*run.network.controls, *run.targets]:
            labels = _labels(target)
            if labels in seen:  # the same URL twice in one feature: one series
                continue
            seen.add(labels)
            status.add_metric([*labels, target.reason], STATUS_VALUE.get(target.status, 3))
            success.add_metric(list(labels), 1.0 if target.status == "ok" else 0.0)
            rtt_ms, bps, lost = metrics_of(target)
            if rtt_ms is not None:
                rtt.add_metric(list(labels), rtt_ms / 1000)
            if bps is not None:
                rate.add_metric(list(labels), bps)
            if lost is not None:
                loss.add_metric(list(labels), lost)
            flow = call_flow(target.observation)
            quality = flow_quality(flow) if flow is not None else None
            if quality is not None:
                mos.add_metric(list(labels), quality.mos)
        yield from (status, success, rtt, rate, loss, mos)
        features = GaugeMetricFamily("probe_feature_status", "Feature verdict (coded as probe_status).",
                                     labels=["platform", "feature", "reason"])
        for f in run.features:
            features.add_metric([f.platform, f.feature, f.reason], STATUS_VALUE.get(f.status, 3))
        yield features
        platforms = GaugeMetricFamily("probe_platform_status",
                                      "Platform verdict (coded as probe_status).",
                                      labels=["platform", "reason"])
        for p in run.platforms:
            platforms.add_metric([p.platform, p.reason], STATUS_VALUE.get(p.status, 3))
        yield platforms
        network = GaugeMetricFamily("probe_network_status",
                                    "The controls' verdict on the network itself.",
                                    labels=["reason"])
        network.add_metric([run.network.reason], STATUS_VALUE.get(run.network.status, 3))
        yield network
        if self.duration is not None:
            yield GaugeMetricFamily("probe_run_duration_seconds",
                                    "How long the latest run took.", value=self.duration)
        if self.finished is not None:
            yield GaugeMetricFamily("probe_last_run_timestamp_seconds",
                                    "When the latest run finished (Unix time).",
                                    value=self.finished)
        yield GaugeMetricFamily("probe_run_interrupted", "1 when the latest run was cut short.",
                                value=1.0 if run.interrupted else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _labels(target: TargetResult) -> tuple[str, str, str, str]:
    platform = target.platform if target.platform is not None else CONTROL
    return platform, target.feature or "", target.url, target.name or ""


def _epoch(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


# --- listening -----------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464' or ':9464' (loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen takes HOST:PORT, e.g. 127.0.0.1:9464, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _answer(exporter: Exporter, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """One request, one answer, then close; a slow, silent or garbled client is dropped."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ConnectionError):
        writer.close()
        return
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    method, path = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
    path = path.split("?", 1)[0]
    if not method:
        code, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
    elif method not in ("GET", "HEAD"):
        code, ctype, body = "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n"
    elif path == "/metrics":
        code, ctype, body = "200 OK", CONTENT_TYPE_LATEST, exporter.exposition()
    elif path == "/":
        code, ctype = "200 OK", "text/html; charset=utf-8"
        body = (b"<html><head><title>probe exporter</title></head><body><h1>probe</h1>"
                b'<p><a href="/metrics">Metrics</a></p></body></html>\n')
    else:
        code, ctype, body = "404 Not Found", "text/plain", b"not found; try /metrics\n"
    header = (f"HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
              f"Connection: close\r\n\r\n").encode()
    try:
        writer.write(header + (b"" if method == "HEAD" else body))
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start_server(exporter: Exporter, host: str, port: int) -> asyncio.Server:
    """Listen for scrapes; the bound port is `server.sockets[0].getsockname()[1]`."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(exporter, reader, writer)

    return await asyncio.start_server(on_client, host, port, limit=MAX_HEAD)


def bind_warning(host: str) -> str | None:
    if is_loopback(host):
        return None
    return (f"serving metrics on {host}, not loopback: anyone who can reach it learns which "
            "platforms are blocked from this network")


def warn(message: str) -> None:
    sys.stderr.write(f"probe: warning: {message}\n")


async def serve(
    loaded: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 9464,
    every: float = 300.0,
    db: str | None = None,
    on_listening: Any = None,
    **runner: Any,
) -> tuple[int, int | None]:
    """Serve metrics while running the catalog every `every` seconds, until SIGINT/SIGTERM.

    Returns (runs done, stopping signal). With `db`, each run is also appended to the history.
    """
    from probe import history, schedule

    exporter = Exporter()
    server = await start_server(exporter, host, port)
    if on_listening is not None:
        on_listening(server.sockets[0].getsockname())

    async def on_run(run: Run) -> None:
        exporter.update(run)
        if db is not None:
            try:
                await asyncio.to_thread(history.record_to, db, run)
            except HistoryError as exc:  # keep serving: the metrics are still right
                warn(f"run not recorded: {exc}")

    stopper = schedule.Stopper()
    stopper.install()
    try:
        done = await schedule.repeat(loaded, on_run, every=every, count=None, stopper=stopper,
                                     **runner)
    finally:
        stopper.remove()
        server.close()
        await server.wait_closed()
    return done, stopper.signum
