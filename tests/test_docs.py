"""Interactive documentation at /docs, and what the OpenAPI document says about operations and headers."""
import io
import re

import pytest

pytestmark = pytest.mark.tdd_green

# Entity and connection headers every answer may carry; OpenAPI leaves them out of "headers".
UNDOCUMENTED = {"content-type", "content-length", "date", "server", "connection"}


@pytest.fixture
def app_config(app_config):
    return {**app_config, "RATE_LIMIT_ENABLED": True, "RATE_LIMIT_AUTH": "3 per minute"}


@pytest.fixture
def document(client):
    return client.get("/openapi.json").json


def _operations(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def _documented_headers(document, path, method, status):
    answer = document["paths"][path][method]["responses"][str(status)]
    return {name.lower() for name in answer.get("headers", {})}


def test_docs_page_is_swagger_ui_on_the_services_own_document(client):
    page = client.get("/docs")

    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "SwaggerUIBundle" in page.text
    assert 'url: "/openapi.json"' in page.text


def test_docs_page_loads_nothing_from_another_host(client):
    page = client.get("/docs").text

    sources = re.findall(r'(?:src|href)="([^"]+)"', page)

    assert sources and all(source.startswith("/docs/assets/") for source in sources)
    assert "validatorUrl: null" in page  # Swagger UI would otherwise ask validator.swagger.io
    assert all(client.get(source).status_code == 200 for source in sources)


def test_docs_assets_are_the_packaged_swagger_ui(client):
    script = client.get("/docs/assets/swagger-ui-bundle.js")

    assert script.status_code == 200
    assert script.mimetype == "text/javascript"
    assert b"SwaggerUIBundle" in script.data


def test_a_docs_asset_answers_304_to_its_etag(client):
    etag = client.get("/docs/assets/swagger-ui.css").headers["ETag"]

    assert client.get("/docs/assets/swagger-ui.css", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("name", ["index.html", "..%2Fswagger-ui.css", "oauth2-redirect.html", "nope.js"])
def test_a_file_that_is_not_a_docs_asset_is_404_json(client, name):
    answer = client.get(f"/docs/assets/{name}")

    assert answer.status_code == 404
    assert "error" in answer.json


def test_every_operation_has_a_unique_operation_id(document):
    ids = [operation.get("operationId") for _, _, operation in _operations(document)]

    assert None not in ids
    assert len(ids) == len(set(ids))


def test_every_operation_has_a_declared_tag(document):
    declared = {tag["name"] for tag in document["tags"]}

    for path, method, operation in _operations(document):
        assert operation.get("tags") and set(operation["tags"]) <= declared, (path, method)


def test_the_document_lists_the_docs_page_as_html(document):
    content = document["paths"]["/docs"]["get"]["responses"]["200"]["content"]

    assert [media_type.split(";")[0] for media_type in content] == ["text/html"]


@pytest.mark.parametrize("path", ["/api/v1/auth/register", "/api/v1/auth/login"])
def test_auth_operations_document_the_rate_limit_headers(document, path):
    for status in document["paths"][path]["post"]["responses"]:
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= _documented_headers(
            document, path, "post", status), status


def test_a_successful_registration_carries_rate_limit_headers_but_no_retry_after(client):
    answer = client.post("/api/v1/auth/register",
                         json={"email": "a@example.com", "password": "password123", "username": "alice"})

    assert answer.status_code == 201
    assert "Retry-After" not in answer.headers
    assert answer.headers["X-RateLimit-Limit"] == "3"
    assert answer.headers["X-RateLimit-Remaining"] == "2"


def test_a_refused_login_attempt_says_when_to_retry(client):
    body = {"email": "x@example.com", "password": "password123"}

    answers = [client.post("/api/v1/auth/login", json=body) for _ in range(4)]

    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert all("Retry-After" not in a.headers for a in answers[:3])
    assert int(answers[-1].headers["Retry-After"]) > 0


def test_only_answers_that_ask_to_wait_document_retry_after(document):
    for path, method, operation in _operations(document):
        for status in operation["responses"]:
            # 409 on an Idempotency-Key POST: the first request with that key is still running.
            keyed_conflict = status == "409" and any(
                parameter.get("name") == "Idempotency-Key" for parameter in operation.get("parameters", []))
            if status not in ("429", "503") and not keyed_conflict:
                assert "retry-after" not in _documented_headers(document, path, method, status), (path, status)


def test_every_header_an_answer_carries_is_documented(client, document, jpeg):
    seen = []

    def call(method, url, path, documented_as=None, **kwargs):
        answer = client.open(url, method=method.upper(), **kwargs)
        seen.append((path, documented_as or method, answer.status_code,
                     {name.lower() for name in answer.headers.keys()}))
        answer.get_data()  # read, then close: a file answer (media) holds its file open until closed
        answer.close()
        return answer

    register = call("post", "/api/v1/auth/register", "/api/v1/auth/register",
                    json={"email": "a@example.com", "password": "password123", "username": "alice"})
    call("post", "/api/v1/auth/register", "/api/v1/auth/register", json={"email": "bad"})
    user_id, auth = register.json["user_id"], {"Authorization": f"Bearer {register.json['token']}"}
    for _ in range(4):  # the last one is refused: 429
        call("post", "/api/v1/auth/login", "/api/v1/auth/login", json={"email": "a@example.com", "password": "x"})
    call("delete", "/api/v1/auth/login", "/api/v1/auth/login", documented_as="post")  # 405
    profile = call("get", f"/api/v1/users/{user_id}/profile", "/api/v1/users/{user_id}/profile")
    call("get", f"/api/v1/users/{user_id}/profile", "/api/v1/users/{user_id}/profile",
         headers={"If-None-Match": profile.headers["ETag"]})
    call("get", "/api/v1/users/me/profile", "/api/v1/users/me/profile", headers=auth)
    call("patch", "/api/v1/users/me/profile", "/api/v1/users/me/profile", json={"bio": "x"}, headers=auth)
    picture = call("post", "/api/v1/users/me/profile/picture", "/api/v1/users/me/profile/picture", headers=auth,
                   data={"image": (io.BytesIO(jpeg), "me.jpg")})
    media = picture.json["profile_picture_url"].split("localhost", 1)[1]
    call("get", media, "/media/{key}")
    call("get", media, "/media/{key}", headers={"Range": "bytes=0-9"})
    flyer = call("post", "/api/v1/flyers", "/api/v1/flyers", headers=auth, data={
        "title": "Sale", "location_address": "Main St. 1", "lat": "47.37", "lng": "8.54",
        "image_1": (io.BytesIO(jpeg), "flyer.jpg")})
    flyer_path = f"/api/v1/flyers/{flyer.json['id']}"
    call("get", flyer_path, "/api/v1/flyers/{flyer_id}")
    call("patch", flyer_path, "/api/v1/flyers/{flyer_id}", json={"title": "Big sale"}, headers=auth)
    call("get", f"/api/v1/users/{user_id}/flyers", "/api/v1/users/{user_id}/flyers")
    call("delete", flyer_path, "/api/v1/flyers/{flyer_id}", headers=auth)
    for url in ("/healthz", "/readyz", "/metrics", "/api/v1/cache/stats", "/dashboard", "/openapi.json", "/docs"):
        call("get", url, url)
    call("get", "/docs/assets/swagger-ui.css", "/docs/assets/{name}")

    undocumented = [(path, method, status, sorted(headers - UNDOCUMENTED - _documented_headers(
        document, path, method, status))) for path, method, status, headers in seen]
    assert [entry for entry in undocumented if entry[3]] == []
    assert {status for _, _, status, _ in seen} >= {200, 201, 204, 206, 304, 400, 401, 405, 429}
