"""Every marshmallow schema of the API: what comes in is validated, what goes out is documented."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from email_validator import EmailNotValidError, validate_email
from marshmallow import (EXCLUDE, RAISE, Schema, ValidationError, fields, post_load,
                         validate, validates_schema)

USERNAME_RE = r"^[A-Za-z0-9_.]{3,30}$"
MAX_PAGE_SIZE = 50
MAX_PAGE = 10**9
DEFAULT_PAGE_SIZE = 20
DEFAULT_VALIDITY = timedelta(days=30)  # a new flyer's valid_until when none is given: valid_from + this


# Written so that the same pattern reads the same in Python and in the OpenAPI document.
no_control_characters = validate.Regexp(r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*$",
                                        error="Control characters are not allowed.")


def Text(*, min_len: int = 0, max_len: int, **kwargs: Any) -> fields.String:
    return fields.String(validate=[validate.Length(min=min_len, max=max_len), no_control_characters],
                         **kwargs)


class UTCDateTime(fields.DateTime):
    """An ISO 8601 timestamp, stored as naive UTC and written with a ``Z``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        if parsed.tzinfo is not None:
            try:
                parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
            except OverflowError:  # 0001-01-01T00:00+14:00, 9999-12-31T23:59-14:00: no such UTC time
                raise ValidationError("Out of range: not a time between years 1 and 9999 in UTC.") from None
        return parsed.replace(microsecond=0)


def check_email(value: str) -> None:
    """Refuse what is not an email address (RFC 5322 / 6531, as email-validator reads it); no DNS lookup."""
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValidationError(str(error)) from None


# -- input ------------------------------------------------------------------

class RegisterSchema(Schema):
    class Meta:
        unknown = RAISE

    # An address as email-validator reads it (syntax, and a domain that could receive mail).
    email = fields.String(required=True, metadata={"format": "email"}, validate=[
        validate.Length(max=254), no_control_characters, check_email])
    password = fields.String(required=True, load_only=True,
                             validate=[validate.Length(min=8, max=128), no_control_characters])
    username = fields.String(required=True, validate=validate.Regexp(
        USERNAME_RE, error="3-30 characters: letters, digits, '_' and '.'"))


class LoginSchema(Schema):
    class Meta:
        unknown = RAISE

    email = fields.String(required=True, validate=[validate.Length(min=1, max=254), no_control_characters])
    password = fields.String(required=True, load_only=True,
                             validate=[validate.Length(min=1, max=128), no_control_characters])


class ProfileUpdateSchema(Schema):
    class Meta:
        unknown = RAISE

    display_name = Text(min_len=1, max_len=50)
    bio = Text(max_len=500)


class FlyerFieldsSchema(Schema):
    """The flat fields of a flyer; ``partial=True`` makes it the PATCH body."""

    class Meta:
        unknown = RAISE

    title = Text(min_len=1, max_len=200, required=True)
    description = Text(max_len=2000)
    location_address = Text(min_len=1, max_len=500, required=True)
    lat = fields.Float(required=True, validate=validate.Range(-90, 90))
    lng = fields.Float(required=True, validate=validate.Range(-180, 180))
    valid_from = UTCDateTime()
    valid_until = UTCDateTime()

    @validates_schema
    def check_validity_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("valid_from"), data.get("valid_until")
        if start is not None and end is not None and end <= start:
            raise ValidationError("valid_until must be after valid_from.", "valid_until")
        if not self.partial and start is not None and end is None and start > datetime.max - DEFAULT_VALIDITY:
            # The default valid_until (valid_from + 30 days) would be past year 9999.
            raise ValidationError("Give valid_until: valid_from + 30 days is past year 9999.", "valid_until")


class PageArgsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    page_size = fields.Integer(load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1))

    @post_load
    def clamp_page_size(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["page_size"] = min(data["page_size"], MAX_PAGE_SIZE)
        return data


# -- output -----------------------------------------------------------------

class ErrorSchema(Schema):
    error = fields.String(required=True)
    details = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), required=True)


class TokenSchema(Schema):
    user_id = fields.Integer(required=True)
    token = fields.String(required=True)


class ProfileSchema(Schema):
    user_id = fields.Integer(required=True, dump_only=True)
    username = fields.String(required=True, dump_only=True)
    display_name = fields.String(required=True)
    bio = fields.String(required=True)
    profile_picture_url = fields.Url(required=True, allow_none=True, dump_only=True)
    profile_picture_thumbnail_url = fields.Url(required=True, allow_none=True, dump_only=True)
    flyer_count = fields.Integer(required=True, dump_only=True)
    created_at = fields.DateTime(required=True, dump_only=True)
    updated_at = fields.DateTime(required=True, dump_only=True)


class CreatorSchema(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    display_name = fields.String(required=True)
    profile_picture_url = fields.Url(required=True, allow_none=True)


class FlyerImageSchema(Schema):
    url = fields.Url(required=True)
    order = fields.Integer(required=True)


class LocationSchema(Schema):
    address = fields.String(required=True)
    lat = fields.Float(required=True)
    lng = fields.Float(required=True)


class ValiditySchema(Schema):
    valid_from = fields.DateTime(required=True)
    valid_until = fields.DateTime(required=True)
    is_valid = fields.Boolean(required=True)


class FlyerSchema(Schema):
    id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    creator = fields.Nested(CreatorSchema, required=True)
    images = fields.List(fields.Nested(FlyerImageSchema), required=True)
    location = fields.Nested(LocationSchema, required=True)
    validity = fields.Nested(ValiditySchema, required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class FlyerPageSchema(Schema):
    count = fields.Integer(required=True)
    next = fields.Url(required=True, allow_none=True)
    previous = fields.Url(required=True, allow_none=True)
    results = fields.List(fields.Nested(FlyerSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadinessSchema(Schema):
    database = fields.String(required=True)
    cache = fields.String(required=True)


_RATE = {"description": "null when the window has no lookups (or, for per-second rates, no length)"}
_SECONDS = {"description": "Latency in seconds, interpolated within the histogram's buckets (as PromQL's "
                           "histogram_quantile); null without requests"}


class AuditCountsSchema(Schema):
    fresh = fields.Integer(required=True)
    stale = fields.Integer(required=True)


class FamilyWindowSchema(Schema):
    """Lookups of one key family over a window; hits are near_hit, hit and lease_wait answers."""

    lookups = fields.Integer(required=True)
    hits = fields.Integer(required=True)
    hit_rate = fields.Float(required=True, allow_none=True, metadata=_RATE)
    lookups_per_second = fields.Float(required=True, allow_none=True, metadata=_RATE)
    near_hits = fields.Integer(required=True)
    near_share = fields.Float(required=True, allow_none=True, metadata={
        "description": "near_hits / hits: the share of hits answered from a process's own copy"})
    results = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True, metadata={
        "description": "Lookups by result: near_hit, hit, lease_wait, miss, stale, lease_timeout, error, bypass"})
    invalidations = fields.Integer(required=True)
    invalidation_outcomes = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True,
                                        metadata={"description": "delivered, queued, retried"})
    audit = fields.Nested(AuditCountsSchema, required=True, metadata={
        "description": "Staleness audit: sampled hits re-read from the database"})


class EndpointWindowSchema(Schema):
    requests = fields.Integer(required=True)
    requests_per_second = fields.Float(required=True, allow_none=True, metadata=_RATE)
    errors = fields.Integer(required=True, metadata={"description": "5xx answers"})
    statuses = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    p50 = fields.Float(required=True, allow_none=True, metadata=_SECONDS)
    p95 = fields.Float(required=True, allow_none=True, metadata=_SECONDS)
    p99 = fields.Float(required=True, allow_none=True, metadata=_SECONDS)
    mean = fields.Float(required=True, allow_none=True)


class _Totals(Schema):
    seconds = fields.Float(required=True, allow_none=True, metadata={
        "description": "How long the window really is: whole 10-second buckets up to now, the running one "
                       "included (50-60 s for the last minute); null since start"})
    lookups = fields.Integer(required=True)
    hits = fields.Integer(required=True)
    hit_rate = fields.Float(required=True, allow_none=True, metadata=_RATE)
    near_share = fields.Float(required=True, allow_none=True, metadata=_RATE)
    requests = fields.Integer(required=True)
    requests_per_second = fields.Float(required=True, allow_none=True, metadata=_RATE)
    errors = fields.Integer(required=True)
    p50 = fields.Float(required=True, allow_none=True, metadata=_SECONDS)
    p95 = fields.Float(required=True, allow_none=True, metadata=_SECONDS)
    p99 = fields.Float(required=True, allow_none=True, metadata=_SECONDS)
    invalidations = fields.Integer(required=True)
    audit = fields.Nested(AuditCountsSchema, required=True)
    breaker_open_seconds = fields.Float(required=True, metadata={
        "description": "Seconds the processes' Redis breakers were open or probing (reported once Redis answers)"})


class WindowSchema(_Totals):
    from_ = fields.DateTime(data_key="from", metadata={"description": "Start of the window's oldest bucket"})
    error_rate = fields.Float(required=True, allow_none=True, metadata=_RATE)
    endpoints = fields.Dict(keys=fields.String(), values=fields.Nested(EndpointWindowSchema), required=True)


class WindowsSchema(Schema):
    last_minute = fields.Nested(WindowSchema, required=True)
    last_5_minutes = fields.Nested(WindowSchema, required=True)
    last_hour = fields.Nested(WindowSchema, required=True)
    since_start = fields.Nested(WindowSchema, required=True)


class FamilyRatesSchema(Schema):
    last_minute = fields.Nested(FamilyWindowSchema, required=True)
    last_5_minutes = fields.Nested(FamilyWindowSchema, required=True)
    last_hour = fields.Nested(FamilyWindowSchema, required=True)
    since_start = fields.Nested(FamilyWindowSchema, required=True)


class PointFamilySchema(Schema):
    lookups = fields.Integer(required=True)
    hits = fields.Integer(required=True)
    hit_rate = fields.Float(required=True, allow_none=True, metadata=_RATE)


class StatsPointSchema(_Totals):
    time = fields.DateTime(required=True, metadata={"description": "Start of the interval"})
    partial = fields.Boolean(required=True, metadata={"description": "The interval is still running (seconds tells how much of it)"})
    families = fields.Dict(keys=fields.String(), values=fields.Nested(PointFamilySchema), required=True)


class ProcessReportSchema(Schema):
    instance = fields.String(required=True)
    pid = fields.Integer(required=True)
    breaker = fields.String(required=True, metadata={"description": "closed, open or half_open"})
    near_entries = fields.Integer(required=True)
    near_bytes = fields.Integer(required=True)
    seen = fields.DateTime(required=True, metadata={"description": "Its last report"})
    reporting = fields.Boolean(required=True, metadata={"description": "Reported within the last 30 s"})


class CacheStatsSchema(Schema):
    scope = fields.String(required=True, metadata={
        "description": "Whose requests are counted: all instances sharing the Redis, or this process alone "
                       "(Redis unavailable, or none configured)"})
    redis = fields.Boolean(required=True, metadata={"description": "False when the figures are this process's alone"})
    generated_at = fields.DateTime(required=True)
    bucket_seconds = fields.Integer(required=True)
    windows = fields.Nested(WindowsSchema, required=True)
    families = fields.Dict(keys=fields.String(), values=fields.Nested(FamilyRatesSchema), required=True)
    instances = fields.List(fields.Nested(ProcessReportSchema), required=True, metadata={
        "description": "Every worker process that reported within the last hour, with its breaker state"})
    recent = fields.List(fields.Nested(StatsPointSchema), required=True,
                         metadata={"description": "The last 10 minutes in 10-second points, oldest first"})
    history = fields.List(fields.Nested(StatsPointSchema), required=True,
                          metadata={"description": "The last 60 minutes in 1-minute points, oldest first"})
