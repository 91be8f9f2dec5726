"""The application factory, its configuration and the schema migrations."""
import os

import pytest
from sqlalchemy import create_engine, inspect

from service import create_app
from service.config import load_config

pytestmark = pytest.mark.tdd_green

REDIS_URL_TEST = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")


def test_config_has_embedded_defaults():
    config = load_config({})

    assert config["SQLALCHEMY_DATABASE_URI"] == "sqlite:///profile-service.db"
    assert config["REDIS_URL"] is None
    assert config["RATE_LIMIT_ENABLED"] is True


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql://u@h/db"])
def test_config_uses_psycopg_3_for_postgresql_urls(url):
    assert load_config({"DATABASE_URL": url})["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/db"


def test_config_reads_every_setting_from_the_environment():
    config = load_config({"REDIS_URL": "redis://r:6379/2", "PUBLIC_BASE_URL": "https://x.example/",
                          "RATE_LIMIT_ENABLED": "false", "CACHE_DEFAULT_TTL": "60"})

    assert (config["REDIS_URL"], config["PUBLIC_BASE_URL"]) == ("redis://r:6379/2", "https://x.example")
    assert (config["RATE_LIMIT_ENABLED"], config["CACHE_DEFAULT_TTL"]) == (False, 60.0)
    assert load_config({"CACHE_NEAR_MAX_BYTES": "1024"})["CACHE_NEAR_MAX_BYTES"] == 1024


def test_overrides_win_over_the_environment(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db", "CACHE_DEFAULT_TTL": 7.0})

    assert app.config["CACHE_DEFAULT_TTL"] == 7.0


def test_without_redis_url_the_cache_is_in_process(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db"})

    assert type(app.extensions["profile_service"].redis).__module__.startswith("fakeredis")


def test_the_in_process_cache_has_no_near_cache(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db"})

    assert app.extensions["profile_service"].cache.near is None


def test_with_redis_url_hits_are_copied_into_a_near_cache_of_the_configured_size(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db", "REDIS_URL": REDIS_URL_TEST,
                      "CACHE_NEAR_MAX_BYTES": 4096})

    assert app.extensions["profile_service"].cache.near.max_bytes == 4096


def test_a_near_cache_size_of_zero_turns_it_off(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db", "REDIS_URL": REDIS_URL_TEST,
                      "CACHE_NEAR_MAX_BYTES": 0})

    assert app.extensions["profile_service"].cache.near is None


def test_migrations_build_the_schema_with_its_indexes(tmp_path):
    url = f"sqlite:///{tmp_path}/migrated.db"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})

    result = app.test_cli_runner().invoke(args=["db", "upgrade"])

    assert result.exit_code == 0, result.output
    engine = create_engine(url)
    indexes = {index["name"] for index in inspect(engine).get_indexes("flyers")}
    engine.dispose()
    assert {"ix_flyers_creator_created", "ix_flyers_creator_validity"} <= indexes
