"""Two gunicorn instances sharing one Redis, scraped by a real Prometheus; promtool on deploy/ and the exposition."""
import json
import os
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops_servers import ROOT, Prometheus, get, wait_until

pytestmark = pytest.mark.tdd_green

HITS = 'result=~"near_hit|hit|lease_wait"'


def lookups(url: str) -> dict[str, float]:
    """{result: n} of cache_requests_total summed over families, from one instance's /metrics."""
    status, _, body = get(url + "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "cache_requests_total":
                out[sample.labels["result"]] = out.get(sample.labels["result"], 0) + sample.value
    return out


def reads(url: str, users: list[int], times: int) -> None:
    for _ in range(times):
        for user in users:
            assert get(f"{url}/api/v1/users/{user}/profile")[0] == 200


def settled(url: str) -> dict[str, float]:
    """The instance's lookups once its workers' snapshot files have caught up (two equal scrapes 0.5 s apart)."""
    def stable():
        first = lookups(url)
        time.sleep(0.5)
        return [first] if lookups(url) == first else None
    return wait_until(stable, what="the workers' counts to settle")[0]


def test_each_instance_metrics_move_by_exactly_its_own_requests(gunicorn_pair):
    first, second, users = gunicorn_pair
    before_first, before_second = settled(first.url), settled(second.url)

    reads(first.url, users[:4], 3)   # 12 lookups, spread over the first instance's two workers
    reads(second.url, users[4:6], 2)  # 4 lookups on the second

    after_first, after_second = settled(first.url), settled(second.url)
    assert sum(after_first.values()) - sum(before_first.values()) == 12
    assert sum(after_second.values()) - sum(before_second.values()) == 4


def test_a_real_prometheus_scrapes_both_and_computes_the_hit_rate_the_traffic_produced(gunicorn_pair, tmp_path):
    first, second, users = gunicorn_pair
    reads(first.url, users, 4)       # per user: the first read of the fleet is a miss, the others hits
    reads(second.url, users, 3)
    counts = [settled(first.url), settled(second.url)]
    total = sum(sum(c.values()) for c in counts)
    hits = sum(n for c in counts for result, n in c.items() if result in ("near_hit", "hit", "lease_wait"))
    prometheus = Prometheus([first.url[len("http://"):], second.url[len("http://"):]], str(tmp_path))
    try:
        wait_until(lambda: prometheus.scalar("sum(cache_requests_total)") == total, timeout=30,
                   what="Prometheus to scrape both instances")

        rate = prometheus.scalar(f"sum(cache_requests_total{{{HITS}}}) / sum(cache_requests_total)")
        assert rate == pytest.approx(hits / total, abs=1e-12)
        assert prometheus.scalar('count(up{job="profile-service"} == 1)') == 2
        assert prometheus.scalar("count(count by (pid) (cache_breaker_state))") == 4  # 2 workers per instance
        for expr in grafana_expressions():  # every panel of the Grafana dashboard is valid PromQL here
            prometheus.query(expr)
    finally:
        prometheus.stop()


def grafana_expressions() -> list[str]:
    with open(os.path.join(ROOT, "deploy", "grafana", "profile-service.json")) as file:
        dashboard = json.load(file)
    return [target["expr"].replace("$__rate_interval", "1m") for panel in dashboard["panels"]
            for target in panel["targets"]]


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", *args], cwd=ROOT, input=stdin, capture_output=True, timeout=60)


def test_promtool_accepts_the_shipped_scrape_config_and_rules():
    config = promtool("config", "deploy/prometheus.yml")
    rules = promtool("rules", "deploy/alerts.yml")

    assert config.returncode == 0, config.stderr.decode() + config.stdout.decode()
    assert rules.returncode == 0, rules.stderr.decode() + rules.stdout.decode()


def test_promtool_accepts_the_exposition(gunicorn_pair):
    first, _, users = gunicorn_pair
    reads(first.url, users[:2], 2)
    exposition = get(first.url + "/metrics")[2]

    checked = promtool("metrics", stdin=exposition)

    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_log_lines_are_json_and_carry_the_echoed_request_id(gunicorn_pair):
    first, _, users = gunicorn_pair
    status, headers, _ = get(f"{first.url}/api/v1/users/{users[0]}/profile", {"X-Request-ID": "gunicorn-req-7"})
    _, other, _ = get(f"{first.url}/api/v1/users/{users[0]}/profile")

    assert status == 200 and headers["X-Request-ID"] == "gunicorn-req-7"
    lines = wait_until(lambda: [line for line in first.log_lines()
                                if line.get("request_id") in ("gunicorn-req-7", other["X-Request-ID"])],
                       what="the access lines")
    assert {line["request_id"] for line in lines} == {"gunicorn-req-7", other["X-Request-ID"]}
    assert all(line["logger"] == "service.access" and line["status"] == 200 for line in lines)
