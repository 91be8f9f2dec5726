"""Operations endpoints: Prometheus metrics, cache hit rates as JSON, and a dashboard of them.

Counts are summed over every process (and instance) that shares the Redis: each pushes its
own (``service.telemetry``), and these endpoints push theirs before reading. Without Redis
they answer with this process's counts alone and say so (``scope``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

from flask import Blueprint, Response, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from cache.stats import INVALIDATIONS
from service.extension import services
from service.http import json_response
from service.telemetry import BUCKETS

bp = Blueprint("operations", __name__)

HIT_RESULTS = ("hit", "lease_wait")
"""Lookups answered from the cache: directly, or after waiting for another reader's fill."""
WINDOWS = ("last_minute", "last_hour", "since_start")


def _rates(results: dict[str, int]) -> dict[str, Any]:
    lookups = {result: n for result, n in results.items() if result != INVALIDATIONS}
    total = sum(lookups.values())
    hits = sum(lookups.get(result, 0) for result in HIT_RESULTS)
    return {"lookups": total, "hits": hits, "hit_rate": round(hits / total, 4) if total else None,
            "results": lookups}


@bp.get("/api/v1/cache/stats")
def cache_stats() -> Response:
    windows, history, _, scope = services().telemetry.shared_counts()
    families = {family: {window: _rates(counts[window]) for window in WINDOWS}
                for family, counts in sorted(windows.items())}
    minutes = [{"minute": datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "families": {family: {k: v for k, v in _rates(results).items() if k != "results"}
                             for family, results in sorted(bucket.items())}}
               for minute, bucket in history]
    return json_response({"scope": scope, "families": families, "history": minutes},
                         headers={"Cache-Control": "no-store"})


class _Collector:
    """The shared counts as Prometheus metric families."""

    def __init__(self, windows: dict, latency: dict) -> None:
        self.windows, self.latency = windows, latency

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("cache_requests", "Cache lookups by key family and result",
                                       labels=["family", "result"])
        invalidations = CounterMetricFamily("cache_invalidations", "Cache invalidations by key family",
                                            labels=["family"])
        for family, counts in sorted(self.windows.items()):
            for result, n in sorted(counts["since_start"].items()):
                if result == INVALIDATIONS:
                    invalidations.add_metric([family], n)
                else:
                    requests.add_metric([family, result], n)
        latency = HistogramMetricFamily("http_request_duration_seconds",
                                        "Time to produce each response, by endpoint", labels=["endpoint"])
        for endpoint, (counts, total) in sorted(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts):
                cumulative += n
                buckets.append((bound, cumulative))
            latency.add_metric([endpoint], buckets, sum_value=total)
        yield from (requests, invalidations, latency)


@bp.get("/metrics")
def metrics() -> Response:
    windows, _, latency, scope = services().telemetry.shared_counts()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(windows, latency))
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type,
                    headers={"Cache-Control": "no-store", "X-Metrics-Scope": scope})


@bp.get("/dashboard")
def dashboard() -> Response:
    return Response(DASHBOARD, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Profile service: cache hit rates</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}th:first-child,td:first-child{text-align:left}
.chart{display:inline-block;margin:0 1.5em 1.5em 0}.chart h3{margin:.2em 0;font-size:14px}
svg{background:#fafafa;border:1px solid #ddd}small{color:#666}
</style></head><body>
<h1>Cache hit rates</h1>
<p><small id="scope">loading...</small> <small>refreshes every 5 s</small></p>
<table id="rates"><thead><tr><th>family</th><th>last minute</th><th>last hour</th><th>since start</th>
<th>lookups (hour)</th></tr></thead><tbody></tbody></table>
<div id="charts"></div>
<script>
const W = 360, H = 120;
function pct(r) { return r.hit_rate === null ? "-" : (100 * r.hit_rate).toFixed(1) + "%"; }
function chart(name, points) {
  const n = points.length, xs = i => 30 + i * (W - 40) / Math.max(1, n - 1), ys = v => H - 20 - v * (H - 30);
  let path = "", pen = "M";
  points.forEach((p, i) => { if (p === null) { pen = "M"; return; } path += pen + xs(i).toFixed(1) + "," + ys(p).toFixed(1) + " "; pen = "L"; });
  const grid = [0, 0.5, 1].map(v => `<line x1="30" x2="${W - 10}" y1="${ys(v)}" y2="${ys(v)}" stroke="#ddd"/>` +
    `<text x="2" y="${ys(v) + 4}" font-size="10">${v * 100}%</text>`).join("");
  return `<div class="chart"><h3>${name}</h3><svg width="${W}" height="${H}">${grid}` +
    `<path d="${path}" fill="none" stroke="#2a6fdb" stroke-width="2"/>` +
    `<text x="30" y="${H - 4}" font-size="10">-60 min</text><text x="${W - 40}" y="${H - 4}" font-size="10">now</text></svg></div>`;
}
async function refresh() {
  try {
    const stats = await (await fetch("/api/v1/cache/stats", {cache: "no-store"})).json();
    document.getElementById("scope").textContent = "Counted over " + stats.scope + ".";
    const rows = Object.entries(stats.families).map(([f, w]) =>
      `<tr><td>${f}</td><td>${pct(w.last_minute)}</td><td>${pct(w.last_hour)}</td><td>${pct(w.since_start)}</td>` +
      `<td>${w.last_hour.lookups}</td></tr>`);
    document.querySelector("#rates tbody").innerHTML = rows.join("") || "<tr><td colspan=5>no lookups yet</td></tr>";
    document.getElementById("charts").innerHTML = Object.keys(stats.families).map(f =>
      chart(f, stats.history.map(m => (m.families[f] || {hit_rate: null}).hit_rate))).join("");
  } catch (e) {
    document.getElementById("scope").textContent = "Could not read /api/v1/cache/stats: " + e;
  }
}
refresh(); setInterval(refresh, 5000);
</script></body></html>
"""
