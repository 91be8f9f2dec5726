"""A model-based test of the read-your-writes promise (Hypothesis stateful testing).

Two processes (two applications on one SQLite database and one fake Redis server) take turns
at writes, reads, Redis outages, flushes, restarts from an old snapshot, deliverer passes and
clock steps, in an order Hypothesis chooses. A model holds what the database holds. The
invariant: once a write has answered, every read, in either process, shows it; a flyer is on
its creator's page and in the profile's count exactly while it is valid.

The model keeps one assumption of the real system: a write that could not deliver its
invalidation waits its deadline before it answers, and within that deadline every process's
deliverer thread has seen the pending rows (the thread polls faster than the deadline). The
write rule plays that part by running each process's deliverer pass once when rows are left.
"""
from __future__ import annotations

from datetime import timedelta

import fakeredis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from cache import EPOCH_KEY
from models import CacheOutbox, db
from service.testing import FakeClock, add_flyer, create_tables, dispose_app, register_user, service_config
from service import create_app

pytestmark = pytest.mark.tdd_green

PROCESSES = st.sampled_from([0, 1])
USERS = st.sampled_from([0, 1])


class ReadYourWrites(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        import tempfile

        self.folder = tempfile.TemporaryDirectory(dir="/dev/shm")  # commits without a disk's fsync
        self.server = fakeredis.FakeServer()
        self.clock = FakeClock(fakeredis.FakeRedis(server=self.server))
        config = service_config(database_url=f"sqlite:///{self.folder.name}/model.db", clock=self.clock,
                                media_root=f"{self.folder.name}/media", CACHE_WRITE_DEADLINE=0.0)
        self.apps = [create_app(config, redis_client=fakeredis.FakeRedis(server=self.server)) for _ in range(2)]
        create_tables(self.apps[0])
        for app in self.apps:  # a real Redis is checked at every new connection; the fake one is told to be
            cache = app.extensions["profile_service"].cache
            cache._scripts.lookup._connection.on_connect = cache.epoch
        self.clients = [app.test_client() for app in self.apps]
        self.users = []
        for n in range(2):
            user_id, headers = register_user(self.clients[0], f"user{n}")
            self.users.append((user_id, headers))
        self.bios = ["", ""]
        self.flyers: list[list[tuple]] = [[], []]  # per user: (valid_from, valid_until)
        self.snapshot: dict[bytes, bytes] | None = None
        self.redis_up = True

    def teardown(self) -> None:
        for app in getattr(self, "apps", []):
            dispose_app(app)
        if hasattr(self, "folder"):
            self.folder.cleanup()

    def _others_notice_pending_rows(self) -> None:
        with self.apps[0].app_context():
            pending = db.session.query(CacheOutbox).filter_by(delivered=False).count()
            db.session.rollback()
        if pending:
            for app in self.apps:
                outbox = app.extensions["profile_service"].outbox
                outbox.poll_interval = 0.0
                outbox.catch_up(min_age=0.0)

    def _valid_now(self, user: int) -> int:
        now = self.clock.now
        return sum(1 for start, end in self.flyers[user] if start <= now < end)

    @rule(process=PROCESSES, user=USERS, value=st.text(alphabet="abc", min_size=1, max_size=4))
    def write_bio(self, process: int, user: int, value: str) -> None:
        user_id, headers = self.users[user]
        response = self.clients[process].patch("/api/v1/users/me/profile", json={"bio": value}, headers=headers)
        assert response.status_code == 200
        self.bios[user] = value
        self._others_notice_pending_rows()

    @rule(process=PROCESSES, user=USERS, starts_in=st.sampled_from([-3600, 0, 5, 90]),
          lasts=st.sampled_from([1, 10, 600, 86400]))
    def add_flyer(self, process: int, user: int, starts_in: int, lasts: int) -> None:
        start = self.clock.now + timedelta(seconds=starts_in)
        end = start + timedelta(seconds=lasts)
        add_flyer(self.apps[process], self.users[user][0], valid_from=start, valid_until=end)
        self.flyers[user].append((start, end))
        self._others_notice_pending_rows()

    @rule(process=PROCESSES, user=USERS)
    def read_profile(self, process: int, user: int) -> None:
        body = self.clients[process].get(f"/api/v1/users/{self.users[user][0]}/profile").json
        assert (body["bio"], body["flyer_count"]) == (self.bios[user], self._valid_now(user))

    @rule(process=PROCESSES, user=USERS)
    def read_page(self, process: int, user: int) -> None:
        body = self.clients[process].get(f"/api/v1/users/{self.users[user][0]}/flyers").json
        assert body["count"] == self._valid_now(user)

    @rule(seconds=st.sampled_from([1, 4, 60, 3600]))
    def time_passes(self, seconds: int) -> None:
        connected, self.server.connected = self.server.connected, True  # Redis's own time passes too
        self.clock.advance(seconds=seconds)
        self.server.connected = connected

    @precondition(lambda self: self.redis_up)
    @rule()
    def redis_goes_down(self) -> None:
        self.server.connected = self.redis_up = False

    @precondition(lambda self: not self.redis_up)
    @rule()
    def redis_comes_back(self) -> None:
        self.server.connected = self.redis_up = True

    @rule(process=PROCESSES)
    def deliverer_pass(self, process: int) -> None:
        outbox = self.apps[process].extensions["profile_service"].outbox
        outbox.poll_interval = 0.0
        caught_up = outbox.catch_up(min_age=0.0)
        # Liveness: once Redis takes the pending rows, the process reads its cache again.
        assert caught_up == (not outbox.cache.suspended)
        if self.redis_up:
            assert caught_up

    @precondition(lambda self: self.redis_up)
    @rule()
    def flushall(self) -> None:
        fakeredis.FakeRedis(server=self.server).flushall()

    @precondition(lambda self: self.redis_up)
    @rule()
    def save_snapshot(self) -> None:
        redis = fakeredis.FakeRedis(server=self.server)
        self.snapshot = {key: redis.dump(key) for key in redis.scan_iter()}

    @precondition(lambda self: self.redis_up and self.snapshot is not None)
    @rule()
    def restart_from_the_snapshot(self) -> None:
        """Redis comes back from an older RDB file: old entries, an old epoch, every connection new."""
        redis = fakeredis.FakeRedis(server=self.server)
        redis.flushall()
        for key, dumped in self.snapshot.items():
            redis.restore(key, 0, dumped, replace=True)
        redis.set(EPOCH_KEY, b"the run id of the server that wrote the snapshot")
        for app in self.apps:
            app.extensions["profile_service"].cache._scripts.lookup._connection.close()


ReadYourWrites.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
TestReadYourWrites = ReadYourWrites.TestCase
