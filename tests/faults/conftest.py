"""Real processes for the fault suite: a PostgreSQL cluster, redis-server, TCP proxies, gunicorn.

Ports (loopback only, from FAULTS_PORT_BASE, default 7100): PostgreSQL 7150, Redis 7101,
proxies 7111 (instance A) and 7112 (instance B) with control ports 7161/7162, gunicorn A on
7121 and B on 7122. Every process
is started here, remembered by PID, and stopped by PID at teardown, even when a test fails;
every wait is bounded.

The cluster (initdb, ``flask db upgrade``) lives for the session; each test gets a fresh
``World``: its own Redis, two proxies and two gunicorn instances (2 workers each), a fresh
user with one flyer, so no breaker, queue or near cache outlives a test.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
import redis

from tests.faults.checker import Checker, Http, page_subject, profile_subject
from tests.faults.hosts import Host, NetworkError, create_hosts, remove_hosts, run_id
from tests.faults.proxy import ProxyControl

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BASE = int(os.environ.get("FAULTS_PORT_BASE", "7100"))
"""First of the 100 loopback ports the suite uses (set FAULTS_PORT_BASE to run two suites at once)."""
PG_PORT = BASE + 50
REDIS_PORT = BASE + 1
PROXY_PORTS = {"A": (BASE + 11, BASE + 61), "B": (BASE + 12, BASE + 62)}  # (proxy, control)
INSTANCE_PORTS = {"A": BASE + 21, "B": BASE + 22}
DATABASE = "faults"
SECRET = "fault-suite-secret-key-long-enough-for-hs256"
PASS_THROUGH = ("CACHE_WRITE_DEADLINE", "OUTBOX_POLL_INTERVAL", "CACHE_NEAR_PROOF_MS")
"""Settings of the service handed on to the instances when set in the test's environment."""


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local if local.exists() else ROOT / ".venv" / "bin" / name)


def _wait(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    """PIDs of the live child processes of `pid`, read from /proc."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.split("/")[2]))
    return sorted(found)


class Process:
    """A child process started by the suite, with its log; stopped by PID."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: Any) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      **popen)
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def send(self, signum: int) -> None:
        if self.running():
            os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send `signum`, wait up to `timeout`, then SIGKILL; also SIGKILL children left behind."""
        left = children(self.pid) if self.running() else []
        if self.running():
            os.kill(self.pid, signum)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        for pid in left:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.popen.wait(timeout=5)
        if not self._log.closed:
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Registry:
    """Every process the suite started; `stop_all` stops the ones still running, newest first."""

    def __init__(self) -> None:
        self.processes: list[Process] = []

    def start(self, *args: Any, **kwargs: Any) -> Process:
        process = Process(*args, **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        while self.processes:
            process = self.processes.pop()
            try:
                process.stop(timeout=5)
            except Exception:  # keep stopping the others
                pass


# PostgreSQL ----------------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    found = candidates[-1] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the PostgreSQL server (apt-get install postgresql)")
    return found


class PostgresCluster:
    """A throwaway cluster: initdb into a temporary directory, pg_ctl on PG_PORT."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sockets = base / "sockets"
        self.log = base / "log" / "postgres.log"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.url = f"postgresql://postgres@{HOST}:{PG_PORT}/{DATABASE}"
        self.admin_url = f"postgresql://postgres@{HOST}:{PG_PORT}/postgres"

    def _run(self, argv: list[str], timeout: float) -> None:
        done = subprocess.run(self.as_postgres + argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        for directory in (self.data, self.sockets, self.log.parent):
            directory.mkdir(parents=True)
            if self.as_postgres:
                shutil.chown(directory, "postgres", "postgres")
        self._run([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--no-sync"], timeout=120)

    def start(self) -> None:
        options = (f"-p {PG_PORT} -k {self.sockets} -c listen_addresses={HOST} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                   "-o", options, "start"], timeout=60)

    def stop(self) -> None:
        """pg_ctl stop -m fast; SIGKILL the postmaster by PID if it is still there."""
        pid = self.postmaster_pid()
        try:
            self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"], timeout=45)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: not _alive(pid), 10, "postmaster exit")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def connect(self, url: str | None = None) -> psycopg.Connection:
        return psycopg.connect(url or self.url, autocommit=True, connect_timeout=5)

    def create_database(self) -> None:
        with self.connect(self.admin_url) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def upgrade(self) -> None:
        env = {**_base_env(), "FLASK_APP": "wsgi", "DATABASE_URL": self.url}
        done = subprocess.run([_bin("flask"), "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"flask db upgrade failed:\n{done.stdout}\n{done.stderr}")


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    base = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    os.chmod(base, 0o755)
    cluster = PostgresCluster(base)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        cluster.upgrade()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


# Redis ----------------------------------------------------------------------------------------

class RedisServer:
    """A redis-server on `port` (foreground child process), optionally persisting to an RDB file."""

    def __init__(self, registry: Registry, port: int, directory: Path, *, rdb: bool = False,
                 maxmemory: str | None = None, policy: str = "noeviction") -> None:
        self.registry, self.port, self.directory = registry, port, directory
        self.rdb_path = directory / "dump.rdb"
        self.argv = ["redis-server", "--port", str(port), "--bind", HOST, "--appendonly", "no",
                     # With rdb, snapshots are taken by the test (SAVE) at chosen moments: an
                     # automatic one could land after the write whose effect it must not hold.
                     "--save", "3600 1" if rdb else "", "--dir", str(directory), "--dbfilename", "dump.rdb",
                     "--enable-debug-command", "local", "--daemonize", "no", "--logfile", ""]
        if maxmemory:
            self.argv += ["--maxmemory", maxmemory, "--maxmemory-policy", policy]
        self.process: Process | None = None
        self.starts = 0

    def start(self) -> "RedisServer":
        self.starts += 1
        self.process = self.registry.start(f"redis-{self.port}", self.argv,
                                           self.directory / f"redis-{self.starts}.log")
        _wait(self._ready, 15, f"redis-server on {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and not self.process.running():
            raise RuntimeError(f"redis-server exited:\n{self.process.log_tail()}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:  # refused, or LOADING its RDB file
            return False

    def client(self, timeout: float = 5.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def kill(self) -> None:
        """kill -9: no save, clients see their connections drop."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)

    def restart(self, *, from_rdb: bool) -> None:
        """Start again on the same port, from the RDB file or empty."""
        self.kill()
        if not from_rdb and self.rdb_path.exists():
            self.rdb_path.unlink()
        self.start()

    def stop(self) -> None:
        self.kill()


# proxies --------------------------------------------------------------------------------------

class ProxyProcess:
    """A proxy process (tests/faults/proxy.py) and its control connection."""

    def __init__(self, registry: Registry, name: str, port: int, control_port: int, target: int,
                 log_dir: Path, routes: list[dict[str, Any]] | None = None) -> None:
        self.name, self.port = name, port
        forwarding = ["--routes", json.dumps(routes)] if routes else ["--port", str(port), "--target", str(target)]
        self.process = registry.start(f"proxy-{name}", [sys.executable, "-m", "tests.faults.proxy", *forwarding,
                                                        "--control", str(control_port)],
                                      log_dir / f"proxy-{name}.log", cwd=ROOT)
        self.control: ProxyControl | None = None

        def connect() -> bool:
            if not self.process.running():
                raise RuntimeError(f"proxy {name} exited:\n{self.process.log_tail()}")
            try:
                self.control = ProxyControl(control_port)
                return True
            except OSError:
                return False

        _wait(connect, 15, f"proxy {name}")

    def __getattr__(self, name: str) -> Any:  # delay, cut, refuse, half_open, status, reset
        return getattr(self.control, name)

    def stop(self) -> None:
        if self.control is not None:
            try:
                self.control.call("stop")
            except (OSError, RuntimeError):
                pass
            self.control.close()
            self.control = None
        self.process.stop(timeout=5)


# gunicorn -------------------------------------------------------------------------------------

class Instance:
    """`gunicorn -w 2 wsgi:app` on `host`:`port`, run from the worktree root (behind `prefix`, e.g. ip netns exec)."""

    def __init__(self, registry: Registry, name: str, port: int, env: dict[str, str], log_dir: Path,
                 workers: int = 2, *, host: str = HOST, prefix: tuple[str, ...] = ()) -> None:
        self.registry, self.name, self.port, self.env, self.log_dir = registry, name, port, env, log_dir
        self.workers_wanted = workers
        self.host, self.prefix = host, prefix
        self.url = f"http://{host}:{port}"
        self.process: Process | None = None

    def start(self) -> "Instance":
        argv = [*self.prefix, _bin("gunicorn"), "-w", str(self.workers_wanted), "-b", f"{self.host}:{self.port}",
                "--graceful-timeout", "5", "--timeout", "30", "wsgi:app"]
        self.process = self.registry.start(f"gunicorn-{self.name}", argv, self.log_dir / f"gunicorn-{self.name}.log",
                                           cwd=ROOT, env=self.env)
        return self

    def healthy(self) -> bool:
        if self.process is None or not self.process.running():
            raise RuntimeError(f"gunicorn {self.name} is not running:\n"
                               f"{self.process.log_tail() if self.process else ''}")
        http = Http(self.url, timeout=2)
        try:
            status, _, _ = http.request("GET", "/healthz")
        except OSError:
            return False
        finally:
            http.close()
        return status == 200

    def wait_ready(self, timeout: float = 40) -> None:
        _wait(self.healthy, timeout, f"gunicorn {self.name} /healthz", interval=0.1)
        _wait(lambda: len(self.workers()) == self.workers_wanted, timeout, f"gunicorn {self.name} workers")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def workers(self) -> list[int]:
        return children(self.pid)

    def reload(self, timeout: float = 30) -> None:
        """SIGHUP: gunicorn starts new workers and stops the old ones gracefully; wait until done."""
        old = set(self.workers())
        os.kill(self.pid, signal.SIGHUP)
        _wait(lambda: not (set(self.workers()) & old) and len(self.workers()) == self.workers_wanted,
              timeout, f"gunicorn {self.name} reload")
        _wait(self.healthy, timeout, f"gunicorn {self.name} /healthz after reload", interval=0.1)

    def kill_worker(self, pid: int | None = None) -> int:
        """SIGKILL one worker (the first one, or `pid`); the master starts a new one."""
        victim = pid or self.workers()[0]
        os.kill(victim, signal.SIGKILL)
        return victim

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, timeout=10)


# the world ------------------------------------------------------------------------------------

def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


class World:
    """Redis, a proxy per instance, instances A (the writer) and B, and a user with one flyer."""

    def __init__(self, registry: Registry, postgres: PostgresCluster, directory: Path) -> None:
        self.registry, self.postgres, self.directory = registry, postgres, directory
        self.redis: RedisServer | None = None
        self.proxies: dict[str, ProxyProcess] = {}
        self.instances: dict[str, Instance] = {}
        self.user_id = 0
        self.token = ""
        self.flyer_id = 0

    def build(self, *, rdb: bool = False, maxmemory: str | None = None, policy: str = "noeviction",
              env: dict[str, str] | None = None, env_by_instance: dict[str, dict[str, str]] | None = None) -> "World":
        self.redis = RedisServer(self.registry, REDIS_PORT, self.directory, rdb=rdb, maxmemory=maxmemory,
                                 policy=policy).start()
        for name, (port, control) in PROXY_PORTS.items():
            self.proxies[name] = ProxyProcess(self.registry, name, port, control, REDIS_PORT, self.directory)
        media = self.directory / "media"
        media.mkdir(exist_ok=True)
        for name, port in INSTANCE_PORTS.items():
            instance_env = {
                **_base_env(),
                **{key: os.environ[key] for key in PASS_THROUGH if key in os.environ},
                "DATABASE_URL": self.postgres.url,
                "REDIS_URL": f"redis://{HOST}:{PROXY_PORTS[name][0]}/0",
                "RATE_LIMIT_ENABLED": "false",
                "SECRET_KEY": SECRET,
                "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
                "MEDIA_ROOT": str(media),
                "METRICS_FLUSH_INTERVAL": "0.25",
                **(env or {}),
                **((env_by_instance or {}).get(name, {})),
            }
            self.instances[name] = Instance(self.registry, name, port, instance_env, self.directory).start()
        for instance in self.instances.values():
            instance.wait_ready()
        self._make_user()
        return self

    @property
    def a(self) -> Instance:
        return self.instances["A"]

    @property
    def b(self) -> Instance:
        return self.instances["B"]

    def admin(self, timeout: float = 5.0) -> redis.Redis:
        """A direct client of the Redis server (not through a proxy)."""
        assert self.redis is not None
        return self.redis.client(timeout)

    def _make_user(self) -> None:
        name = "u" + uuid.uuid4().hex[:12]
        http = Http(self.a.url)
        status, body = http.json("POST", "/api/v1/auth/register",
                                 {"email": f"{name}@example.com", "password": "password123", "username": name})
        assert status == 201, (status, body)
        self.user_id, self.token = body["user_id"], body["token"]
        status, body = http.multipart("/api/v1/flyers", {
            "title": "t0", "description": "fault suite", "location_address": "Main St. 1, Zurich",
            "lat": "47.37", "lng": "8.54"}, {"image_1": ("a.jpg", jpeg(), "image/jpeg")}, self.token)
        assert status == 201, (status, body)
        self.flyer_id = body["id"]
        http.close()

    def checker(self, readers: str = "BBBA", *, pages: bool = True, read_pause: float = 0.004) -> Checker:
        subjects = [profile_subject(self.user_id)]
        if pages:
            subjects.append(page_subject(self.user_id, self.flyer_id))
        return Checker(self.a.url, self.token, subjects, {name: i.url for name, i in self.instances.items()},
                       readers=readers, read_pause=read_pause)

    def cache_counts(self, instance: str = "B", family: str = "profile") -> tuple[int, int] | None:
        """(hits, lookups) of `family` since start over every process sharing the Redis; None if unknown."""
        http = Http(self.instances[instance].url, timeout=2)
        try:
            status, body = http.json("GET", "/api/v1/cache/stats")
        except OSError:
            return None
        finally:
            http.close()
        if status != 200 or not isinstance(body, dict) or not str(body.get("scope", "")).startswith("all"):
            return None
        since = body.get("families", {}).get(family, {}).get("since_start", {})
        return since.get("hits", 0), since.get("lookups", 0)

    def wait_hit_rate(self, *, threshold: float = 0.5, timeout: float = 15.0, window: float = 0.6,
                      family: str = "profile", min_lookups: int = 10) -> float | None:
        """Seconds until the hit rate over a `window` reaches `threshold` (reads must be running); None if not."""
        started = time.monotonic()
        previous = None
        while time.monotonic() - started < timeout:
            counts = self.cache_counts(family=family)
            if counts is not None and previous is not None:
                hits, lookups = counts[0] - previous[0], counts[1] - previous[1]
                if lookups >= min_lookups and hits >= 0 and hits / lookups >= threshold:
                    return time.monotonic() - started
            previous = counts
            time.sleep(window)
        return None

    def teardown(self) -> None:
        stopping = [run_in_thread(instance.stop) for instance in self.instances.values()]  # both at once
        for thread in stopping:
            thread.join(timeout=30)
        for proxy in self.proxies.values():
            proxy.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    registry = Registry()
    yield registry
    registry.stop_all()


@pytest.fixture
def world_factory(registry: Registry, postgres: PostgresCluster, tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Build a World with options (rdb, maxmemory, policy, env, env_by_instance); torn down after the test."""
    worlds: list[World] = []

    def build(**options: Any) -> World:
        world = World(registry, postgres, tmp_path)
        worlds.append(world)
        return world.build(**options)

    yield build
    for world in worlds:
        world.teardown()
    registry.stop_all()  # anything a test started by hand


@pytest.fixture
def world(world_factory: Callable[..., World]) -> World:
    return world_factory()


def run_in_thread(function: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


# several hosts ----------------------------------------------------------------------------------

HOSTS_BASE = int(os.environ.get("HOSTS_PORT_BASE", str(BASE + 70)))
"""Ports of the several-hosts tests: their single-mode Redis +1, proxy control ports +11.., gunicorn +21..
(HOSTS_PORT_BASE moves them; by default they follow FAULTS_PORT_BASE)."""
HOST_DELAYS = {"A": (2.0, 3.0), "B": (10.0, 6.0), "C": (4.0, 12.0)}
"""Steady one-way delays (ms) between each host and PostgreSQL/Redis: (to the server, back)."""


class HostWorld(World):
    """A World whose instances run on hosts (network namespaces), each behind its own proxy to PG and Redis.

    Proxy "A" is host A's whole network to the servers; ``proxies[h].delay(up, down, group)`` with
    group "redis" or "pg" (or both when None).
    """

    def __init__(self, registry: Registry, postgres: PostgresCluster, directory: Path, hosts: list[Host]) -> None:
        super().__init__(registry, postgres, directory)
        self.hosts = {host.name: host for host in hosts}
        self.mode = ""
        self.admin_redis: Callable[[], Any] = lambda: self.admin()
        """A client of the Redis deployment itself, not through a host's proxy."""

    def build_on_hosts(self, mode: str, redis_ports: list[int], redis_env: Callable[[Host], dict[str, str]],
                       workers: int = 2) -> "HostWorld":
        self.mode = mode
        media = self.directory / "media"  # the object store every host shares
        media.mkdir(exist_ok=True)
        for index, host in enumerate(self.hosts.values()):
            routes = [{"port": PG_PORT, "target": PG_PORT, "host": host.outside, "group": "pg"}]
            for port in redis_ports:
                routes.append({"port": port, "target": port, "host": host.outside, "group": "redis"})
                routes.append({"port": port, "target": port, "netns": host.netns, "group": "redis"})
            proxy = ProxyProcess(self.registry, host.name, 0, HOSTS_BASE + 11 + index, 0, self.directory, routes)
            proxy.delay(*HOST_DELAYS[host.name])
            self.proxies[host.name] = proxy
            env = {
                **_base_env(),
                **{key: os.environ[key] for key in PASS_THROUGH if key in os.environ},
                "DATABASE_URL": f"postgresql://postgres@{host.outside}:{PG_PORT}/{DATABASE}",
                "RATE_LIMIT_ENABLED": "false",
                "SECRET_KEY": SECRET,
                "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
                "MEDIA_ROOT": str(media),
                "METRICS_FLUSH_INTERVAL": "0.25",
                # A few round trips at the largest delays (30 ms each way), as a deployment with
                # Redis on another host would set it: at the default 0.1 s a Cluster worker
                # sometimes timed out reading the slot map at boot, and gunicorn gave up.
                "REDIS_SOCKET_TIMEOUT": "0.25",
                **redis_env(host),
            }
            self.instances[host.name] = Instance(self.registry, host.name, HOSTS_BASE + 21 + index, env,
                                                 self.directory, workers, host=host.inside,
                                                 prefix=host.exec_prefix).start()
        for instance in self.instances.values():
            instance.wait_ready(timeout=60)
        self._make_user()
        return self

    def steady(self) -> None:
        """Every host back to its steady delays, no refusal, no half-open connection."""
        for name, proxy in self.proxies.items():
            proxy.reset()
            proxy.delay(*HOST_DELAYS[name])


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    """Hosts A, B and C: network namespaces with a veth pair each, removed at the end (fails, never skips)."""
    try:
        created = create_hosts("ABC", run_id())
    except NetworkError as error:
        pytest.fail(f"network namespaces are not usable on this machine: {error}")
    try:
        yield created
    finally:
        remove_hosts(created)


@pytest.fixture(scope="module", params=["single", "sentinel", "cluster"])
def host_world(request: pytest.FixtureRequest, registry: Registry, postgres: PostgresCluster, hosts: list[Host],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostWorld]:
    """Instances on hosts A, B and C sharing PostgreSQL and the Redis deployment of one mode (all three in turn)."""
    mode = request.param
    directory = tmp_path_factory.mktemp(f"hosts-{mode}")
    # Rows left by earlier tests' worlds would be replayed by every new worker's epoch repair
    # (a full retention window: 2-3 s of stalled reads per host in Cluster mode, see
    # docs/DEPLOY.md); their Redis servers are gone, so the rows matter to no one now.
    with postgres.connect() as conn:
        conn.execute("DELETE FROM cache_outbox")
    world = HostWorld(registry, postgres, directory, hosts)
    try:
        if mode == "single":
            world.redis = RedisServer(registry, HOSTS_BASE + 1, directory).start()
            world.build_on_hosts(mode, [HOSTS_BASE + 1],
                                 lambda host: {"REDIS_URL": f"redis://{host.outside}:{HOSTS_BASE + 1}/0"})
        elif mode == "sentinel":
            group = request.getfixturevalue("sentinel_group")
            group.flush()
            world.admin_redis = lambda: group.node(group.primary_port())
            world.build_on_hosts(mode, [*group.data_ports, *group.sentinel_ports], lambda host: {
                "REDIS_MODE": "sentinel", "REDIS_SENTINEL_MASTER": group.master,
                "REDIS_SENTINELS": ",".join(f"{host.outside}:{port}" for port in group.sentinel_ports)})
        else:
            cluster = request.getfixturevalue("redis_cluster")
            cluster.flush()
            world.admin_redis = lambda: redis.RedisCluster(host=HOST, port=cluster.ports[0])
            world.build_on_hosts(mode, list(cluster.ports), lambda host: {
                "REDIS_MODE": "cluster", "REDIS_URL": f"redis://{host.outside}:{cluster.ports[0]}"})
        yield world
    finally:
        world.teardown()


@pytest.fixture
def hosts_case(host_world: HostWorld) -> HostWorld:
    """The hosts' world at steady delays, no fault, and a user of the test's own.

    A user of its own: the checker numbers its writes from 0, so a value left by an earlier
    test (a higher number) would pass for a fresh one.
    """
    host_world.steady()
    host_world._make_user()
    return host_world
