"""Write profile-service.json, the Grafana dashboard over the service's Prometheus metrics.

    python deploy/grafana/make_dashboard.py     # after changing a panel; the JSON is committed

Import it in Grafana (Dashboards > New > Import) and pick the Prometheus data source that
scrapes the service (deploy/prometheus.yml).
"""
import json
import os

HITS = 'result=~"near_hit|hit|lease_wait"'
PANELS = [
    # (title, unit, [(expr, legend)], kind)
    ("Cache hit rate by family", "percentunit",
     [(f'sum by (family) (rate(cache_requests_total{{{HITS}}}[$__rate_interval])) / sum by (family) (rate(cache_requests_total[$__rate_interval]))', "{{family}}")], "timeseries"),
    ("Cache lookups per second by result", "ops",
     [('sum by (result) (rate(cache_requests_total[$__rate_interval]))', "{{result}}")], "stacked"),
    ("Requests per second by endpoint", "reqps",
     [('sum by (endpoint) (rate(http_request_duration_seconds_count[$__rate_interval]))', "{{endpoint}}")], "timeseries"),
    ("Server errors (5xx) per second", "reqps",
     [('sum by (endpoint, status) (rate(http_request_duration_seconds_count{status=~"5.."}[$__rate_interval]))', "{{endpoint}} {{status}}")], "timeseries"),
    ("Latency percentiles (all endpoints)", "s",
     [(f'histogram_quantile({q}, sum by (le) (rate(http_request_duration_seconds_bucket[$__rate_interval])))', f"p{int(q * 100)}")
      for q in (0.5, 0.95, 0.99)], "timeseries"),
    ("p99 latency by endpoint", "s",
     [('histogram_quantile(0.99, sum by (le, endpoint) (rate(http_request_duration_seconds_bucket[$__rate_interval])))', "{{endpoint}}")], "timeseries"),
    ("Invalidations per second by outcome", "ops",
     [('sum by (family, outcome) (rate(cache_invalidation_outcomes_total[$__rate_interval]))', "{{family}} {{outcome}}")], "timeseries"),
    ("Fills: duration p99 and refused fills", "s",
     [('histogram_quantile(0.99, sum by (le, family) (rate(cache_fill_duration_seconds_bucket[$__rate_interval])))', "p99 {{family}}"),
      ('sum by (family) (rate(cache_fills_total{outcome="refused"}[$__rate_interval]))', "refused/s {{family}}")], "timeseries"),
    ("Staleness audit (sampled hits re-read from the database)", "short",
     [('sum by (family, result) (increase(cache_audit_total[$__rate_interval]))', "{{family}} {{result}}")], "bars"),
    ("Redis breaker not closed (worker processes)", "short",
     [('sum by (instance) (cache_breaker_state{state!="closed"})', "{{instance}}")], "timeseries"),
    ("Near cache: entries and bytes", "short",
     [('sum by (instance) (cache_near_entries)', "entries {{instance}}"),
      ('sum by (instance) (cache_near_bytes)', "bytes {{instance}}"),
      ('sum by (instance) (rate(cache_near_evictions_total[$__rate_interval]))', "evictions/s {{instance}}")], "timeseries"),
    ("Outbox backlog (pending invalidations)", "short",
     [('max by (instance) (cache_outbox_backlog)', "{{instance}}")], "timeseries"),
    ("Worker CPU and memory", "short",
     [('sum by (instance) (rate(process_cpu_seconds_total[$__rate_interval]))', "CPU s/s (scraped worker) {{instance}}"),
      ('profile_service_worker_processes', "workers {{instance}}")], "timeseries"),
]


def panel(index, title, unit, targets, kind):
    custom = {"drawStyle": "bars" if kind == "bars" else "line", "lineWidth": 1, "fillOpacity": 20 if kind != "timeseries" else 5,
              "showPoints": "auto", "stacking": {"mode": "normal" if kind == "stacked" else "none", "group": "A"}}
    return {
        "id": index + 1, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}} for i, (expr, legend) in enumerate(targets)],
    }


dashboard = {
    "title": "Profile service: cache, requests, staleness",
    "uid": "profile-service",
    "tags": ["profile-service", "cache"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]},
    "annotations": {"list": []},
    "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
}

if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profile-service.json")
    with open(path, "w") as file:
        json.dump(dashboard, file, indent=2)
        file.write("\n")
