"""Every setting of the service, read from the environment in one place."""
from __future__ import annotations

import os
from typing import Any, Mapping


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


REDIS_MODES = ("single", "cluster", "sentinel")


def _redis_mode(value: str) -> str:
    mode = value.strip().lower() or "single"
    if mode not in REDIS_MODES:
        raise ValueError(f"REDIS_MODE must be one of {', '.join(REDIS_MODES)}, not {value!r}")
    return mode


def _addresses(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as a list of (host, port)."""
    addresses = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, colon, port = item.rpartition(":")
        if not colon or "]" in port:
            host, port = item, ""
        addresses.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
    return addresses


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
        "REDIS_MODE": _redis_mode(env.get("REDIS_MODE", "single")),
        "REDIS_SENTINELS": _addresses(env.get("REDIS_SENTINELS", "")),
        "REDIS_SENTINEL_MASTER": env.get("REDIS_SENTINEL_MASTER", "mymaster"),
        "MEDIA_ROOT": env.get("MEDIA_ROOT", os.path.abspath("media")),
        "STORAGE_URL": env.get("STORAGE_URL") or None,  # None: file:// + MEDIA_ROOT
        "MEDIA_BASE_URL": (env.get("MEDIA_BASE_URL") or "").rstrip("/") or None,
        "PUBLIC_BASE_URL": (env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
        # Host names served besides PUBLIC_BASE_URL's (env TRUSTED_HOSTS); neither set: any host.
        "SERVED_HOSTS": [name.strip() for name in env.get("TRUSTED_HOSTS", "").split(",") if name.strip()],
        "REQUEST_MAX_URI_BYTES": int(env.get("REQUEST_MAX_URI_BYTES", "4096")),
        "JSON_MAX_BYTES": int(env.get("JSON_MAX_BYTES", str(64 * 1024))),
        "MAX_CONTENT_LENGTH": int(env.get("UPLOAD_MAX_REQUEST_BYTES", str(27 * 1024 * 1024))),
        "PICTURE_MAX_BYTES": int(env.get("PICTURE_MAX_BYTES", str(5 * 1024 * 1024))),
        # Pictures decode in child processes (service/decoder.py): per worker process, DECODE_WORKERS children
        # and DECODE_QUEUE waiting uploads at most, each waiting DECODE_WAIT_SECONDS at most (else 503 with
        # Retry-After); each decode under a deadline and RLIMIT_AS. See docs/SECURITY.md.
        "DECODE_WORKERS": int(env.get("DECODE_WORKERS", "2")),
        "DECODE_QUEUE": int(env.get("DECODE_QUEUE", "2")),
        "DECODE_TIMEOUT_SECONDS": float(env.get("DECODE_TIMEOUT_SECONDS", "1.5")),
        "DECODE_MEMORY_MB": int(env.get("DECODE_MEMORY_MB", "512")),
        "DECODE_WAIT_SECONDS": float(env.get("DECODE_WAIT_SECONDS", "0.4")),
        "DECODE_RETRY_AFTER_SECONDS": int(env.get("DECODE_RETRY_AFTER_SECONDS", "2")),
        "DECODE_MAX_SCANS": int(env.get("DECODE_MAX_SCANS", "100")),
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
        "METRICS_DIR": env.get("METRICS_DIR") or None,
        "METRICS_INSTANCE": env.get("METRICS_INSTANCE") or None,
        "CACHE_AUDIT_FRACTION": float(env.get("CACHE_AUDIT_FRACTION", "0.01")),
        "CACHE_AUDIT_GRACE": float(env.get("CACHE_AUDIT_GRACE", "1")),
        "CACHE_AUDIT_MAX_PER_SECOND": float(env.get("CACHE_AUDIT_MAX_PER_SECOND", "5")),
        "LOG_LEVEL": env.get("LOG_LEVEL", "INFO"),
        "ACCESS_LOG_SAMPLE": float(env.get("ACCESS_LOG_SAMPLE", "1")),
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
        # service.database pings on checkout instead: always for sessions, for the cache's
        # read-only loads only connections idle for DB_PING_IDLE_SECONDS.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": False},
        "DB_PING_IDLE_SECONDS": float(env.get("DB_PING_IDLE_SECONDS", "1")),
    }
