"""Every setting of the service, read from the environment in one place."""
from __future__ import annotations

import os
from typing import Any, Mapping


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the application settings from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    database_url = env.get("DATABASE_URL", "sqlite:///profile-service.db")
    if database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgres://"):]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": env.get("REDIS_URL") or None,
        "SECRET_KEY": env.get("SECRET_KEY", "dev-only-insecure-secret-key-change-me-in-production"),
        "JWT_TTL_SECONDS": int(env.get("JWT_TTL_SECONDS", "86400")),
        "PASSWORD_HASH_METHOD": env.get("PASSWORD_HASH_METHOD", "scrypt"),
        "MEDIA_ROOT": env.get("MEDIA_ROOT", os.path.abspath("media")),
        "PUBLIC_BASE_URL": (env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
        # Host names served besides PUBLIC_BASE_URL's (env TRUSTED_HOSTS); neither set: any host.
        "SERVED_HOSTS": [name.strip() for name in env.get("TRUSTED_HOSTS", "").split(",") if name.strip()],
        "REQUEST_MAX_URI_BYTES": int(env.get("REQUEST_MAX_URI_BYTES", "4096")),
        "JSON_MAX_BYTES": int(env.get("JSON_MAX_BYTES", str(64 * 1024))),
        "MAX_CONTENT_LENGTH": int(env.get("UPLOAD_MAX_REQUEST_BYTES", str(27 * 1024 * 1024))),
        "PICTURE_MAX_BYTES": int(env.get("PICTURE_MAX_BYTES", str(5 * 1024 * 1024))),
        "RATE_LIMIT_ENABLED": _bool(env.get("RATE_LIMIT_ENABLED", "true")),
        "RATE_LIMIT_AUTH": env.get("RATE_LIMIT_AUTH", "10 per minute"),
        "CACHE_DEFAULT_TTL": float(env.get("CACHE_DEFAULT_TTL", "300")),
        "CACHE_TTL_JITTER": float(env.get("CACHE_TTL_JITTER", "0.1")),
        "CACHE_NEGATIVE_TTL": float(env.get("CACHE_NEGATIVE_TTL", "5")),
        "CACHE_FAST_PATH": _bool(env.get("CACHE_FAST_PATH", "true")),
        "CACHE_NEAR_MAX_BYTES": int(env.get("CACHE_NEAR_MAX_BYTES", str(64 * 1024 * 1024))),
        "CACHE_NEAR_PROOF_MS": float(env.get("CACHE_NEAR_PROOF_MS", "30")),
        "CACHE_WRITE_DEADLINE": float(env.get("CACHE_WRITE_DEADLINE", "1.0")),
        "OUTBOX_POLL_INTERVAL": float(env.get("OUTBOX_POLL_INTERVAL", "0.5")),
        "OUTBOX_GRACE": float(env.get("OUTBOX_GRACE", "0.2")),
        "METRICS_FLUSH_INTERVAL": float(env.get("METRICS_FLUSH_INTERVAL", "2")),
        "CACHE_LEASE_TTL": float(env.get("CACHE_LEASE_TTL", "2")),
        "CACHE_LEASE_WAIT": float(env.get("CACHE_LEASE_WAIT", "0.2")),
        "CACHE_BREAKER_THRESHOLD": int(env.get("CACHE_BREAKER_THRESHOLD", "5")),
        "CACHE_BREAKER_BASE_DELAY": float(env.get("CACHE_BREAKER_BASE_DELAY", "0.5")),
        "CACHE_BREAKER_MAX_DELAY": float(env.get("CACHE_BREAKER_MAX_DELAY", "30")),
        "REDIS_SOCKET_TIMEOUT": float(env.get("REDIS_SOCKET_TIMEOUT", "0.1")),
        "DB_RETRY_AFTER_SECONDS": int(env.get("DB_RETRY_AFTER_SECONDS", "5")),
        "WRITE_VERIFY_SECONDS": float(env.get("WRITE_VERIFY_SECONDS", "10")),
        "IDEMPOTENCY_TTL_SECONDS": int(env.get("IDEMPOTENCY_TTL_SECONDS", str(24 * 3600))),
        "IDEMPOTENCY_LEASE_SECONDS": int(env.get("IDEMPOTENCY_LEASE_SECONDS", "35")),
        "IDEMPOTENCY_PURGE_INTERVAL": float(env.get("IDEMPOTENCY_PURGE_INTERVAL", "60")),
        # No ping per checkout: service.database pings connections idle for DB_PING_IDLE_SECONDS.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": False},
        "DB_PING_IDLE_SECONDS": float(env.get("DB_PING_IDLE_SECONDS", "1")),
    }
