"""The benchmark's rows, its tables and targets, and bench/RESULTS.md."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    label: str  # what is measured, the same across servers for the same endpoint ("profile hit")
    server: str  # "service", "flask-caching", "no-cache", "floor-static", "floor-redis"
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_us: float  # gunicorn master + workers, per request
    redis_us: float | None = None  # redis-server, per request
    pg_us: float | None = None  # every postgres process, per request
    hit_rate: float | None = None
    hit_source: str = ""
    sql: float | None = None
    pings: float | None = None
    errors: int = 0  # socket errors, timeouts and unexpected statuses
    wraps: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    driver: str = "wrk"
    others_pct: float | None = None  # CPU of other processes during the row, % of the machine


def find(rows: list[Row], server: str, label: str) -> Row | None:
    return next((r for r in rows if r.server == server and r.label == label), None)


def floor_row(rows: list[Row]) -> Row | None:
    return find(rows, "floor-redis", "floor")


def ratio(value: float | None, reference: Row | None) -> float | None:
    if value is None or reference is None or not reference.cpu_us:
        return None
    return value / reference.cpu_us


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


HEADER = ["row", "server", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms", "CPU µs/req", "× floor-redis",
          "× flask-caching", "× no-cache", "hit rate", "SQL/req", "pings/req", "Redis µs/req", "PG µs/req", "others' CPU", "errors"]


def table(rows: list[Row]) -> str:
    floor = floor_row(rows)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        fc = find(rows, "flask-caching", r.label) if r.server != "flask-caching" else None
        nc = find(rows, "no-cache", r.label) if r.server != "no-cache" else None
        hit = "-" if r.hit_rate is None else f"{100 * r.hit_rate:.1f}% ({r.hit_source})"
        errors = str(r.errors) + (f", plan wrapped {r.wraps}x" if r.wraps and "miss" in r.label else "")
        cells = [r.label, r.server, str(r.connections), _f(r.rps, 0), _f(r.p50_ms, 2), _f(r.p95_ms, 2), _f(r.p99_ms, 2),
                 _f(r.cpu_us, 0), _f(ratio(r.cpu_us, floor), 2), _f(ratio(r.cpu_us, fc), 2), _f(ratio(r.cpu_us, nc), 2),
                 hit, _f(r.sql, 2), _f(r.pings, 2), _f(r.redis_us, 0), _f(r.pg_us, 0), _f(r.others_pct, 0, "%"),
                 errors]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Growth:
    flyers: int
    valid: int
    page: int
    samples_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        s = sorted(self.samples_ms)
        return s[min(len(s) - 1, int(0.95 * len(s)))]


def growth_table(growth: list[Growth]) -> str:
    lines = ["| creator's flyers | valid | page | requests | median ms | p95 ms | × smallest creator, same page |",
             "|---|---|---|---|---|---|---|"]
    for g in growth:
        base = next((b for b in growth if b.flyers == min(x.flyers for x in growth)
                     and (b.page == 1) == (g.page == 1)), None)
        lines.append(f"| {g.flyers:,} | {g.valid:,} | {g.page}{' (first)' if g.page == 1 else ' (last)'} | "
                     f"{len(g.samples_ms)} | {g.median:.2f} | {g.p95:.2f} | "
                     f"{_f(g.median / base.median if base else None, 2)} |")
    return "\n".join(lines)


@dataclass
class Target:
    name: str
    met: bool | None  # None: not measured
    evidence: str


def targets(rows: list[Row], growth: list[Growth], stale: int | None) -> list[Target]:
    out: list[Target] = []
    floor = floor_row(rows)
    hits = [r for r in rows if r.server == "service" and r.label.startswith(("profile hit", "page hit"))]
    misses = [r for r in rows if r.server == "service" and "miss" in r.label]
    evidence = [f"{r.label} {r.cpu_us:.0f} µs vs floor-redis {floor.cpu_us:.0f} µs ({ratio(r.cpu_us, floor):.2f}x)"
                for r in hits if floor]
    out.append(Target("hit CPU/request <= floor-redis", (all(ratio(r.cpu_us, floor) <= 1 for r in hits)
                                                         if floor and hits else None), "; ".join(evidence)))
    static = find(rows, "floor-static", "floor")
    out.append(Target("stretch: hit CPU/request < floor-static (an empty Flask route)",
                      all(r.cpu_us < static.cpu_us for r in hits) if static and hits else None,
                      "; ".join(f"{r.label} {r.cpu_us:.0f} µs vs {static.cpu_us:.0f} µs ({r.cpu_us / static.cpu_us:.2f}x)"
                                for r in hits) if static else "not measured"))
    pairs = [(r, find(rows, "flask-caching", r.label)) for r in hits]
    pairs = [(r, fc) for r, fc in pairs if fc]
    out.append(Target("hit CPU/request <= 1/1.2 of flask-caching (ratio <= 0.83)",
                      all(r.cpu_us / fc.cpu_us <= 1 / 1.2 for r, fc in pairs) if pairs else None,
                      "; ".join(f"{r.label} {r.cpu_us / fc.cpu_us:.2f}x" for r, fc in pairs)))
    pairs = [(r, find(rows, "no-cache", r.label)) for r in misses]
    pairs = [(r, nc) for r, nc in pairs if nc]
    # A miss row that its own counters show was mostly hits (a plan too short for the row) proves nothing.
    invalid = [r.label for r, _ in pairs if r.hit_rate is not None and r.hit_rate > 0.05]
    out.append(Target("miss CPU/request <= 1.2x no-cache",
                      all(r.cpu_us / nc.cpu_us <= 1.2 for r, nc in pairs) if pairs and not invalid else None,
                      "; ".join(f"{r.label} {r.cpu_us / nc.cpu_us:.2f}x" for r, nc in pairs)
                      + (f" (not judged: {', '.join(invalid)} had over 5% hits)" if invalid else "")))
    firsts = sorted((g for g in growth if g.page == 1), key=lambda g: g.flyers)
    if len(firsts) >= 2:
        grow = firsts[-1].median / firsts[0].median
        out.append(Target(f"page-miss latency growth < 2x from {firsts[0].flyers:,} to {firsts[-1].flyers:,} flyers "
                          "(first page)", grow < 2,
                          f"{firsts[0].median:.2f} ms -> {firsts[-1].median:.2f} ms ({grow:.2f}x)"))
    else:
        out.append(Target("page-miss latency growth < 2x (first page)", None, "not measured"))
    hit_p99 = [r for r in hits if r.connections >= 32]
    out.append(Target("p99 < 10 ms for hits at 32 connections", all(r.p99_ms < 10 for r in hit_p99) if hit_p99 else None,
                      "; ".join(f"{r.label} {r.p99_ms:.1f} ms" for r in hit_p99)))
    miss_p99 = [r for r in misses if r.connections >= 32]
    out.append(Target("p99 < 25 ms for misses at 32 connections",
                      all(r.p99_ms < 25 for r in miss_p99) if miss_p99 else None,
                      "; ".join(f"{r.label} {r.p99_ms:.1f} ms" for r in miss_p99)))
    uploads = [r for r in rows if r.server == "service" and r.label.startswith("upload 2 MB")]
    judged = [r for r in uploads if r.label == "upload 2 MB"]  # the row at the upload concurrency (4)
    out.append(Target("2 MB upload median < 100 ms (judged at the upload row's concurrency)",
                      all(r.p50_ms < 100 for r in judged) if judged else None,
                      "; ".join(f"median {r.p50_ms:.0f} ms at {r.connections} connection{'s' * (r.connections > 1)}"
                                for r in uploads)))
    out.append(Target("stale answers in the mixed workload = 0", None if stale is None else stale == 0,
                      "not measured" if stale is None else f"{stale} stale"))
    return out


def targets_table(items: list[Target]) -> str:
    lines = ["| target | result | measured |", "|---|---|---|"]
    for t in items:
        result = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        lines.append(f"| {t.name} | {result} | {t.evidence} |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": str(os.cpu_count()), "memory": memory, "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
