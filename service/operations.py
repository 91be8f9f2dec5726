"""Operations endpoints: Prometheus metrics of this instance, fleet-wide stats as JSON, and a dashboard.

* ``/metrics``: this instance only, summed over its worker processes (``service.telemetry``:
  the answering process's live counts plus its siblings' snapshot files); counters never go
  down while the instance runs, whatever Redis does.
* ``/api/v1/cache/stats``: every instance sharing the Redis, from 10-second buckets: sliding
  windows (the last minute is the last six buckets, the current one included, and says how
  many seconds that is), volumes beside rates, latency percentiles, errors, invalidations,
  the staleness audit and each process's breaker state. Without Redis: this process alone,
  and ``scope`` says so.
* ``/dashboard``: a self-contained page (no external script, font or style) charting the stats.
"""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from flask import Blueprint, Response, request
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder

from cache import keys
from cache.stats import BUCKET_SECONDS, FILL_BUCKETS, sum_fields
from service.extension import services
from service.http import json_response
from service.telemetry import BUCKETS, PROCESS_STALE_AFTER

bp = Blueprint("operations", __name__)

HIT_RESULTS = ("near_hit", "hit", "lease_wait")
"""Lookups answered from the cache: this process's copy, Redis, or Redis after waiting for another reader's fill."""
VERSION = "0.1.0"
BREAKER_STATES = ("closed", "open", "half_open")
PROCESS_FORGOTTEN_AFTER = 600
"""Seconds after its last report when a process leaves the stats' list (shown as not reporting until then)."""
_PROCESS_REGISTRY = CollectorRegistry(auto_describe=False)
"""process_* and python_* of the answering process (prometheus_client's own collectors)."""
for _collector in (ProcessCollector, PlatformCollector, GCCollector):
    _collector(registry=_PROCESS_REGISTRY)


# -- /api/v1/cache/stats -------------------------------------------------------------------------

def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _per_second(n: float, seconds: float | None) -> float | None:
    return round(n / seconds, 3) if seconds else None


def quantile(q: float, counts: list[float]) -> float | None:
    """The q-quantile of a histogram (counts per BUCKETS bucket, +Inf last), interpolated as PromQL's histogram_quantile."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0.0
    for index, n in enumerate(counts):
        if seen + n >= rank and n:
            if index >= len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[index - 1] if index else 0.0
            return round(lower + (BUCKETS[index] - lower) * (rank - seen) / n, 6)
        seen += n
    return BUCKETS[-1]


def _split(fields: dict[str, float]) -> dict[str, dict]:
    """Counter fields grouped: lookups {family: {result: n}}, invalidations, audits, requests and latency per endpoint."""
    out: dict[str, dict] = {"lookup": {}, "inval": {}, "inval_outcome": {}, "audit": {}, "fill": {},
                            "req": {}, "lat": {}, "latsum": {}}
    for field, n in fields.items():
        kind, *labels = field.split("|")
        group = out.get(kind)
        if group is None:
            continue
        if kind in ("inval", "latsum"):
            group[labels[0]] = group.get(labels[0], 0) + n
        elif kind == "lat":
            counts = group.setdefault(labels[0], [0] * (len(BUCKETS) + 1))
            if labels[1].isdigit() and int(labels[1]) <= len(BUCKETS):
                counts[int(labels[1])] += n
        else:
            group.setdefault(labels[0], {})[labels[1]] = n
    return out


def family_figures(results: dict[str, float], invalidations: float, outcomes: dict[str, float],
                   audit: dict[str, float], seconds: float | None) -> dict[str, Any]:
    """One key family's figures over a window."""
    results = {r: int(n) for r, n in sorted(results.items())}
    lookups = sum(results.values())
    hits = sum(results.get(r, 0) for r in HIT_RESULTS)
    return {"lookups": lookups, "hits": hits, "hit_rate": _ratio(hits, lookups),
            "lookups_per_second": _per_second(lookups, seconds), "near_hits": results.get("near_hit", 0),
            "near_share": _ratio(results.get("near_hit", 0), hits), "results": results,
            "invalidations": int(invalidations), "invalidation_outcomes": {o: int(n) for o, n in sorted(outcomes.items())},
            "audit": {"fresh": int(audit.get("fresh", 0)), "stale": int(audit.get("stale", 0))}}


def summarize(fields: dict[str, float], seconds: float | None) -> dict[str, Any]:
    """One window's figures: per family (lookups, hit rate, near share, ...), requests per endpoint, audit."""
    parts = _split(fields)
    families = {family: family_figures(parts["lookup"].get(family, {}), parts["inval"].get(family, 0),
                                       parts["inval_outcome"].get(family, {}), parts["audit"].get(family, {}), seconds)
                for family in sorted(set(parts["lookup"]) | set(parts["inval"]) | set(parts["audit"]))}
    endpoints = {}
    for endpoint in sorted(parts["req"]):
        statuses = parts["req"][endpoint]
        count = sum(statuses.values())
        errors = sum(n for status, n in statuses.items() if status.startswith("5"))
        latency = parts["lat"].get(endpoint, [0] * (len(BUCKETS) + 1))
        endpoints[endpoint] = {
            "requests": int(count), "requests_per_second": _per_second(count, seconds), "errors": int(errors),
            "statuses": {s: int(n) for s, n in sorted(statuses.items())},
            "p50": quantile(0.5, latency), "p95": quantile(0.95, latency), "p99": quantile(0.99, latency),
            "mean": round(parts["latsum"].get(endpoint, 0.0) / count, 6) if count else None}
    requests = sum(e["requests"] for e in endpoints.values())
    errors = sum(e["errors"] for e in endpoints.values())
    all_latency = [sum(c) for c in zip(*parts["lat"].values())] if parts["lat"] else []
    open_seconds = round(fields.get("breaker_open_seconds", 0.0), 3)
    lookups = sum(f["lookups"] for f in families.values())
    hits = sum(f["hits"] for f in families.values())
    near = sum(f["near_hits"] for f in families.values())
    return {
        "seconds": seconds, "lookups": lookups, "hits": hits, "hit_rate": _ratio(hits, lookups),
        "near_share": _ratio(near, hits), "requests": requests, "requests_per_second": _per_second(requests, seconds),
        "errors": errors, "error_rate": _ratio(errors, requests),
        "p50": quantile(0.5, all_latency), "p95": quantile(0.95, all_latency), "p99": quantile(0.99, all_latency),
        "invalidations": sum(f["invalidations"] for f in families.values()),
        "audit": {r: sum(f["audit"][r] for f in families.values()) for r in ("fresh", "stale")},
        "breaker_open_seconds": open_seconds, "families": families, "endpoints": endpoints}


def _series(buckets: list[tuple[int, dict]], now: float, step: int) -> list[dict[str, Any]]:
    """Points of `step` seconds (whole buckets), oldest first; the last one is partial and says so."""
    per_point = step // BUCKET_SECONDS
    points = []
    for i in range(0, len(buckets), per_point):
        group = buckets[i:i + per_point]
        start = group[0][0]
        seconds = min(step, now - start)
        summary = summarize(sum_fields(fields for _, fields in group), seconds)
        points.append({"time": _iso(start), "seconds": round(seconds, 3), "partial": seconds < step,
                       **{k: summary[k] for k in ("lookups", "hits", "hit_rate", "near_share", "requests",
                                                   "requests_per_second", "errors", "p50", "p95", "p99",
                                                   "invalidations", "audit", "breaker_open_seconds")},
                       "families": {f: {k: v[k] for k in ("lookups", "hits", "hit_rate")}
                                    for f, v in summary["families"].items()}})
    return points


def fleet_stats(buckets: list[tuple[int, dict]], totals: dict[str, float], reports: list[dict[str, Any]],
                scope: str, now: float) -> dict[str, Any]:
    """The stats document: windows, per-process reports, and two series (10 s over 10 min, 1 min over 1 h)."""
    def window(count: int) -> dict[str, Any]:
        chosen = buckets[-count:]
        summary = summarize(sum_fields(f for _, f in chosen), round(now - chosen[0][0], 3))
        return {"from": _iso(chosen[0][0]), **summary}

    current = int(now // 60) * 60  # minute points aligned on the minute: the last hour's 60 minutes
    hour = [(start, fields) for start, fields in buckets if start >= current - 59 * 60]
    instances = []
    for report in sorted(reports, key=lambda r: (r.get("instance", ""), r.get("pid", 0))):
        age = now - report.get("seen", 0)
        if age > PROCESS_FORGOTTEN_AFTER:
            continue
        instances.append({"instance": report.get("instance"), "pid": report.get("pid"),
                          "breaker": report.get("breaker"), "near_entries": report.get("near_entries", 0),
                          "near_bytes": report.get("near_bytes", 0), "seen": _iso(report.get("seen", 0)),
                          "reporting": age <= PROCESS_STALE_AFTER})
    windows = {"last_minute": window(60 // BUCKET_SECONDS), "last_5_minutes": window(300 // BUCKET_SECONDS),
               "last_hour": window(3600 // BUCKET_SECONDS), "since_start": summarize(totals, None)}
    families = {}
    for name, summary in windows.items():
        for family, figures in summary.pop("families").items():
            families.setdefault(family, {w: None for w in windows})[name] = figures
    for family in families.values():  # a family with nothing in a window: zeros, not null
        for name, figures in family.items():
            if figures is None:
                family[name] = family_figures({}, 0, {}, {}, windows[name]["seconds"])
    return {"scope": scope, "redis": not scope.startswith("this process only"),
            "generated_at": _iso(now), "bucket_seconds": BUCKET_SECONDS,
            "windows": windows, "families": dict(sorted(families.items())), "instances": instances,
            "recent": _series(buckets[-600 // BUCKET_SECONDS:], now, BUCKET_SECONDS),
            "history": _series(hour, now, 60)}


@bp.get("/api/v1/cache/stats")
def cache_stats() -> Response:
    buckets, totals, reports, scope, now = services().telemetry.fleet()
    return json_response(fleet_stats(buckets, totals, reports, scope, now), headers={"Cache-Control": "no-store"})


# -- /metrics ---------------------------------------------------------------------------------

def _histogram(name: str, documentation: str, labels: list[str], series: Iterable[tuple[list[str], list[float]]],
               bounds: tuple[float, ...]) -> HistogramMetricFamily:
    """A histogram family from [(label values, [count per bucket (not cumulative)..., sum])]."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, counts in series:
        cumulative, buckets = 0.0, []
        for bound, n in zip((*map(str, bounds), "+Inf"), counts[:-1]):
            cumulative += n
            buckets.append((bound, cumulative))
        family.add_metric(values, buckets, sum_value=counts[-1])
    return family


class InstanceCollector:
    """This instance's counts: the sum of its processes' snapshots (live ones for gauges)."""

    def __init__(self, snapshots: list[tuple[dict[str, Any], bool]], outbox_backlog: Any) -> None:
        self.snapshots = snapshots
        self.outbox_backlog = outbox_backlog

    def collect(self) -> Iterator[Any]:
        counters = sum_fields(snapshot["counters"] for snapshot, _ in self.snapshots)
        families = {
            "lookup": CounterMetricFamily("cache_requests", "Cache lookups by key family and result "
                                          "(near_hit, hit, lease_wait, miss, stale, lease_timeout, error, bypass)",
                                          labels=["family", "result"]),
            "inval": CounterMetricFamily("cache_invalidations", "Cache invalidations by key family", labels=["family"]),
            "inval_outcome": CounterMetricFamily("cache_invalidation_outcomes", "Cache invalidations by key family "
                                                 "and outcome (delivered, queued, retried)", labels=["family", "outcome"]),
            "fill": CounterMetricFamily("cache_fills", "Lease holders' loads and fills by key family and outcome "
                                        "(stored, refused, uncacheable, error)", labels=["family", "outcome"]),
            "breaker_open_seconds": CounterMetricFamily(
                "cache_breaker_open_seconds", "Seconds the worker processes' Redis breakers were open or probing"),
            "audit": CounterMetricFamily("cache_audit", "Staleness audits of sampled cache hits by key family and "
                                         "result (fresh, stale, dropped, unverified)", labels=["family", "result"]),
        }
        for field, n in sorted(counters.items()):
            kind, *labels = field.split("|")
            if kind in families:
                families[kind].add_metric(labels, n)
        yield from families.values()

        fills: dict[str, list[float]] = {}
        latency: dict[str, list[float]] = {}
        for snapshot, _ in self.snapshots:
            for family, (counts, total) in snapshot["fill"].items():
                _add(fills, family, [*counts, total])
            for key, counts in snapshot["latency"].items():
                _add(latency, key, counts)
        yield _histogram("cache_fill_duration_seconds", "Time a lease holder took to load and fill, by key family",
                         ["family"], ((k.split("|"), v) for k, v in sorted(fills.items())), FILL_BUCKETS)
        yield _histogram("http_request_duration_seconds", "Time to produce each response, by endpoint, method and status",
                         ["endpoint", "method", "status"], ((k.split("|"), v) for k, v in sorted(latency.items())),
                         BUCKETS)

        breaker = GaugeMetricFamily("cache_breaker_state", "Redis circuit breaker state of each live worker process "
                                    "(1 for the current state)", labels=["pid", "state"])
        entries = GaugeMetricFamily("cache_near_entries", "Answers held in the worker processes' near caches")
        size = GaugeMetricFamily("cache_near_bytes", "Bytes of answers held in the worker processes' near caches")
        evictions = CounterMetricFamily("cache_near_evictions", "Near-cache copies dropped to stay within their size")
        processes = GaugeMetricFamily("profile_service_worker_processes", "Live worker processes of this instance")
        live = [snapshot for snapshot, alive in self.snapshots if alive]
        for snapshot in sorted(live, key=lambda s: s["pid"]):
            for state in BREAKER_STATES:
                breaker.add_metric([str(snapshot["pid"]), state], float(snapshot["gauges"]["breaker"] == state))
        entries.add_metric([], sum(s["gauges"]["near_entries"] for s in live))
        size.add_metric([], sum(s["gauges"]["near_bytes"] for s in live))
        evictions.add_metric([], sum(s["gauges"].get("near_evictions", 0) for s, _ in self.snapshots))
        processes.add_metric([], len(live))
        yield from (breaker, entries, size, evictions, processes)

        if self.outbox_backlog is not None:
            backlog = GaugeMetricFamily("cache_outbox_backlog", "Invalidations waiting in the outbox table")
            backlog.add_metric([], float(self.outbox_backlog()))
            yield backlog
        info = InfoMetricFamily("profile_service_build", "Build information of the profile service")
        info.add_metric([], {"version": VERSION, "python_version": platform.python_version(),
                             "cache_schema": str(keys.SCHEMA_VERSION)})
        yield info


def _add(into: dict[str, list[float]], key: str, counts: list[float]) -> None:
    current = into.get(key)
    into[key] = list(counts) if current is None else [a + b for a, b in zip(current, counts)]


@bp.get("/metrics")
def metrics() -> Response:
    app_services = services()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(app_services.telemetry.instance_snapshots(), app_services.outbox_backlog))
    registry.register(_PROCESS_REGISTRY)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type, headers={"Cache-Control": "no-store"})


# -- /dashboard -------------------------------------------------------------------------------

@bp.get("/dashboard")
def dashboard() -> Response:
    return Response(_dashboard_page(), content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


def _dashboard_page() -> str:
    global _PAGE
    if _PAGE is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.html")
        with open(path, encoding="utf-8") as file:
            _PAGE = file.read()
    return _PAGE


_PAGE: str | None = None
