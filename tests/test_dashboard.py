"""The dashboard in headless Chromium, after real traffic on two gunicorn instances sharing one Redis."""
import json
import os

import pytest

from tests.ops_servers import get

pytestmark = pytest.mark.tdd_green

CHARTS = ("c-hits", "c-rate", "c-latency", "c-inval", "c-audit", "c-breaker")


def reads(url, users, times):
    for _ in range(times):
        for user in users:
            assert get(f"{url}/api/v1/users/{user}/profile")[0] == 200


def is_stats(response) -> bool:
    return response.url.endswith("/api/v1/cache/stats")


@pytest.fixture
def page(chromium):
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.problems = []
    page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    yield page
    page.close()


def shown(page, selector) -> str:
    return page.locator(selector).first.get_attribute("data-value")


def as_shown(value) -> str:
    return "" if value is None else (str(value) if not isinstance(value, float) or not value.is_integer()
                                     else str(int(value)))


def test_the_dashboard_charts_the_stats_it_reads_and_follows_new_traffic(gunicorn_pair, page, tmp_path):
    first, second, users = gunicorn_pair
    reads(first.url, users, 3)
    reads(second.url, users[:5], 2)

    with page.expect_response(is_stats) as answer:
        page.goto(first.url + "/dashboard")
    stats = answer.value.json()
    page.wait_for_selector("#c-hits svg .marker")

    minute = stats["windows"]["last_minute"]
    assert shown(page, '#tiles [data-k="lookups"]') == as_shown(minute["lookups"])
    assert shown(page, '#tiles [data-k="hit_rate"]') == as_shown(minute["hit_rate"])
    assert page.locator('#tiles [data-k="hit_rate"]').inner_text() == f"{100 * minute['hit_rate']:.1f}%"
    assert shown(page, '#tiles [data-k="requests"]') == as_shown(minute["requests"])
    assert shown(page, '#tiles [data-k="errors"]') == "0"
    profile = stats["families"]["profile"]
    row = '#families tr[data-family="profile"]'
    assert shown(page, f'{row} [data-k="since_start_lookups"]') == as_shown(profile["since_start"]["lookups"])
    assert shown(page, f'{row} [data-k="hit_rate"]') == as_shown(profile["last_minute"]["hit_rate"])
    assert page.locator('#instances [data-k="breaker"]').all_inner_texts() == [i["breaker"] for i in stats["instances"]]
    gunicorn_workers = [i for i in stats["instances"] if i["pid"] != os.getpid()]  # not the apps of other tests
    assert [i["breaker"] for i in gunicorn_workers if i["reporting"]] == ["closed"] * 4, stats["instances"]
    assert page.locator("#banner").is_hidden()
    for chart in CHARTS:  # each chart spans its card, with axes and labels
        card, svg = page.locator(f"#{chart}").bounding_box(), page.locator(f"#{chart} svg").bounding_box()
        assert svg["width"] > 0.9 * card["width"], chart
        assert page.locator(f"#{chart} svg text").count() >= 6, chart
    assert page.locator("#c-hits .line").count() == 2 and page.locator("#c-hits .bar").count() >= 1
    assert page.locator("#c-latency .marker").count() >= 3

    page.hover("#c-hits svg", position={"x": 600, "y": 80})
    assert page.locator("#c-hits .tip").is_visible() and "hit rate" in page.locator("#c-hits .tip").inner_text()

    reads(second.url, users, 4)  # more traffic: the next refresh (every 5 s) shows it
    with page.expect_response(is_stats, timeout=15000) as again:
        pass
    later = again.value.json()["windows"]["last_minute"]
    page.wait_for_function("n => document.querySelector('#tiles [data-k=\"lookups\"]').dataset.value === String(n)",
                           arg=later["lookups"])
    assert later["lookups"] >= minute["lookups"] + 40

    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"], full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert page.problems == []


def test_the_dashboard_says_plainly_when_it_cannot_reach_the_stats(gunicorn_pair, page):
    first, _, _ = gunicorn_pair
    page.route("**/api/v1/cache/stats", lambda route: route.abort())

    page.goto(first.url + "/dashboard")

    page.wait_for_selector("#banner.error")
    assert "Cannot reach /api/v1/cache/stats" in page.locator("#banner").inner_text()


def test_the_dashboard_says_plainly_when_it_runs_without_redis(gunicorn_pair, page):
    first, _, _ = gunicorn_pair
    stats = json.loads(get(first.url + "/api/v1/cache/stats")[2])
    stats.update(scope="this process only (Redis unavailable)", redis=False)
    page.route("**/api/v1/cache/stats", lambda route: route.fulfill(json=stats))

    page.goto(first.url + "/dashboard")

    page.wait_for_selector("#banner.warn")
    assert page.locator("#banner").inner_text().startswith("Without Redis: these figures are this process's alone")
    assert page.problems == []
