"""The project's tests run on the testing kit it ships (service.testing): its fixtures and factories.

Here: the database backends every database test runs on, and fixtures only this project needs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from models import db

pytest.register_assert_rewrite("service.testing")  # before the import below, so its asserts explain themselves
from service.testing import FAST_HASH, TEST_SECRET, FakeClock, jpeg_bytes  # noqa: E402

pytest_plugins = ["service.testing", "tests.deployments"]

__all__ = ["FAST_HASH", "TEST_SECRET", "FakeClock", "jpeg_bytes"]  # imported by test modules

SQLITE = "sqlite"
POSTGRES_URL = os.environ.get("DATABASE_URL", "")
BACKENDS = [SQLITE] + (["postgresql"] if POSTGRES_URL.startswith("postgres") else [])


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Every database test runs on SQLite, and on PostgreSQL too when DATABASE_URL names one."""
    if request.param == SQLITE:
        return f"sqlite:///{tmp_path / 'test.db'}"
    return POSTGRES_URL


@pytest.fixture
def count_statements(app: Any):
    """Count the SQL statements run inside the ``with`` block."""
    @contextmanager
    def count_statements() -> Iterator[list[str]]:
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            yield statements
        finally:
            event.remove(engine, "before_cursor_execute", record)
    return count_statements
