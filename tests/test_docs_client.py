"""The OpenAPI document is good enough for a client generator: a generated Python client drives the service."""
import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from service.testing import dispose_app, make_app

pytestmark = pytest.mark.tdd_green

PACKAGE = "profile_service_client"
# openapi-python-client decodes only JSON, text and octet-stream bodies: pictures are read as bytes.
GENERATOR_CONFIG = "content_type_overrides:\n  image/jpeg: application/octet-stream\npost_hooks: []\n"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generate a client package from the service's /openapi.json; return the generator's output and the package."""
    app = make_app()
    document = app.test_client().get("/openapi.json").data
    dispose_app(app)
    work = tmp_path_factory.mktemp("generated")
    (work / "openapi.json").write_bytes(document)
    (work / "config.yml").write_text(GENERATOR_CONFIG)
    run = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", "openapi.json",
                          "--config", "config.yml", "--meta", "none", "--output-path", PACKAGE],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(work))
    yield run.stdout + run.stderr, importlib.import_module(PACKAGE)
    sys.path.remove(str(work))
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def _module(name):
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_generator_accepts_the_document_without_warnings(generated):
    output, _ = generated

    assert "warning" not in output.lower(), output


def test_the_generated_functions_are_named_by_operation_id(generated):
    _, package = generated

    functions = {path.stem for path in Path(package.__file__).parent.glob("api/*/*.py")}

    assert {"register", "login", "update_my_profile", "create_flyer", "list_creator_flyers", "get_flyer"} <= functions


def test_a_generated_client_registers_edits_a_profile_posts_a_flyer_and_reads_a_page(generated, live_service, jpeg):
    _, package = generated
    models, types = _module("models"), _module("types")
    anonymous = package.Client(base_url=live_service.url, raise_on_unexpected_status=True)

    token = _module("api.auth.register").sync(client=anonymous, body=models.Register(
        email="alice@example.com", password="secret-pass", username="alice"))
    me = package.AuthenticatedClient(base_url=live_service.url, token=token.token, raise_on_unexpected_status=True)
    profile = _module("api.profiles.update_my_profile").sync(client=me, body=models.ProfileUpdate(
        display_name="Alice", bio="Bakery on Main St."))
    flyer = _module("api.flyers.create_flyer").sync(client=me, body=models.CreateFlyerBody(
        title="Bakery sale", location_address="Main St. 1, Zurich", lat=47.37, lng=8.54,
        image_1=types.File(payload=io.BytesIO(jpeg), file_name="flyer.jpg", mime_type="image/jpeg")))
    page = _module("api.flyers.list_creator_flyers").sync(client=anonymous, user_id=token.user_id)

    assert (profile.display_name, profile.bio) == ("Alice", "Bakery on Main St.")
    assert isinstance(flyer, models.Flyer) and flyer.creator.id == token.user_id
    assert [f.id for f in page.results] == [flyer.id]
    assert page.results[0].images[0].url.startswith(live_service.url + "/media/")


def test_a_generated_client_reads_an_error_answer_as_the_error_model(generated, live_service):
    _, package = generated
    anonymous = package.Client(base_url=live_service.url)

    answer = _module("api.flyers.get_flyer").sync(client=anonymous, flyer_id=999)

    assert isinstance(answer, _module("models").Error)
    assert answer.error
