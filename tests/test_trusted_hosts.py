"""Trusted hosts: a Host the service does not serve answers 400 JSON and leaves nothing in Redis."""
import pytest

from models import db
from service import create_app
from service.config import load_config
from service.edge import served_hosts

pytestmark = pytest.mark.tdd_green

READS = ["/api/v1/users/1/profile", "/api/v1/users/1/flyers", "/api/v1/users/1/flyers?page=1&page_size=5",
         "/api/v1/flyers/1", "/api/v1/users/2/profile"]


@pytest.fixture
def serve(app_config, redis_client):
    """Return a test client of an app built with ``config`` over the usual test settings, with one user and flyer."""
    apps = []

    def serve(**config):
        app = create_app({**app_config, **config}, redis_client=redis_client)
        apps.append(app)
        with app.app_context():
            db.create_all()
        return app.test_client()

    yield serve
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def seeded(client, register, add_flyer):
    user_id, headers = register("alice")
    add_flyer(user_id)
    return headers


def _redis_state(redis_client):
    """Every key and hash field, process counters ({stats}) aside."""
    return {key: (sorted(redis_client.hgetall(key).items()) if redis_client.type(key) == b"hash" else
                  redis_client.type(key)) for key in redis_client.keys() if b"{stats}" not in key}


def _refused(response):
    return response.status_code == 400 and response.mimetype == "application/json" and "error" in response.json


def test_the_public_base_urls_host_is_served_on_any_port_and_in_any_case(serve, seeded):
    client = serve(PUBLIC_BASE_URL="https://api.example.com")

    for host in ("api.example.com", "api.example.com:8443", "API.Example.COM"):
        assert client.get(READS[0], headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize("host", ["evil.example", "api.example.com.evil.example", "example.com", "127.0.0.1",
                                  "api.example.co", "xapi.example.com"])
def test_another_host_than_the_public_base_urls_is_400_and_leaves_nothing_in_redis(serve, seeded, redis_client, host):
    client = serve(PUBLIC_BASE_URL="https://api.example.com")
    before = _redis_state(redis_client)

    answers = [client.get(path, headers={"Host": host}) for path in READS for _ in range(2)]
    answers.append(client.post("/api/v1/auth/login", headers={"Host": host},
                               json={"email": "alice@example.com", "password": "password123"}))

    assert all(_refused(response) for response in answers)
    assert _redis_state(redis_client) == before


def test_every_trusted_host_is_served_and_others_refused(serve, seeded):
    client = serve(SERVED_HOSTS=["a.example", " B.example:8000 "], PUBLIC_BASE_URL="https://api.example.com")

    for host in ("a.example", "b.example", "b.example:1", "api.example.com"):
        assert client.get(READS[0], headers={"Host": host}).status_code == 200, host
    assert _refused(client.get(READS[0], headers={"Host": "c.example"}))


def test_thousands_of_untrusted_hosts_leave_nothing_in_redis(serve, seeded, redis_client):
    client = serve(SERVED_HOSTS=["a.example"])
    before = _redis_state(redis_client)

    answers = [client.get(READS[n % len(READS)], headers={"Host": f"h{n}.example"}) for n in range(1500)]

    assert all(_refused(response) for response in answers)
    assert _redis_state(redis_client) == before


@pytest.mark.parametrize("host", ["a b", "x" * 300, f"{'x' * 64}.example", "ex_ample.com", "evil:99999", "evil:0",
                                  "evil:08", "", "a..b", "[::1", "host/path", "host@evil", "host\\evil", "é.example",
                                  "host:", ".", "a.example:80:80"])
def test_a_malformed_host_is_400_and_leaves_nothing_in_redis_even_when_any_host_is_served(
        client, seeded, redis_client, host):
    before = _redis_state(redis_client)

    answers = [client.get(path, headers={"Host": host}) for path in READS for _ in range(2)]

    assert all(_refused(response) for response in answers), [r.status_code for r in answers]
    assert _redis_state(redis_client) == before


@pytest.mark.parametrize("host, base", [("anything.example", "anything.example"), ("localhost:5000", "localhost:5000"),
                                        ("127.0.0.1", "127.0.0.1"), ("[::1]:8000", "[::1]:8000"), ("[::1]:80", "[::1]"),
                                        ("a-b.c-d.example", "a-b.c-d.example"), ("x" * 63 + ".example", "x" * 63 + ".example"),
                                        ("example.com.", "example.com."), ("Example.COM:80", "example.com"),
                                        ("xn--exmple-cua.example", "exämple.example")])
def test_any_wellformed_host_is_served_when_none_is_configured(client, seeded, redis_client, host, base):
    response = client.get(READS[1], headers={"Host": host})
    again = client.get(READS[1], headers={"Host": host})  # the fast path's answer

    assert response.status_code == 200
    assert again.data == response.data
    assert response.json["results"][0]["images"][0]["url"].startswith(f"http://{base}/media/")
    assert not [field for key in redis_client.keys() if redis_client.type(key) == b"hash"
                for field in redis_client.hkeys(key) if field.startswith(b"lease|")]  # both paths: one variant


def test_urls_carry_the_requests_host_on_both_paths(client, seeded):
    answers = [client.get(READS[1], headers={"Host": "example.com:80"}) for _ in range(2)]

    assert answers[0].data == answers[1].data
    assert answers[0].json["results"][0]["creator"]["profile_picture_url"] is None
    assert all(b"http://example.com/" in answer.data or b'"next":null' in answer.data for answer in answers)


def test_trusted_hosts_come_from_the_environment():
    config = load_config({"TRUSTED_HOSTS": "a.example, B.EXAMPLE:8000,,::1", "PUBLIC_BASE_URL": "https://c.example:9/"})

    assert served_hosts(config) == {"a.example", "b.example", "c.example", "::1"}


def test_no_trusted_hosts_in_the_environment_means_any_host():
    assert served_hosts(load_config({})) == frozenset()
