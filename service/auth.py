"""Accounts: registration, login, and the bearer tokens that identify the caller."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache

import jwt
from flask import Blueprint, Response, current_app, request
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from models import User, db
from models.base import MAX_ID
from service.commits import commit_write
from service.errors import Conflict, Forbidden, Unauthorized
from service.http import json_body, json_response
from service.schemas import LoginSchema, RegisterSchema
from service.telemetry import USER_ID

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")


@lru_cache(maxsize=4)
def unknown_user_hash(method: str) -> str:
    """A hash made with ``method``, checked when the email is unknown, so a login takes as long either way."""
    return generate_password_hash("not-a-real-password", method=method)


@bp.record_once
def _make_unknown_user_hash(state) -> None:
    # Made when the app is built, so not even a process's first unknown login takes longer.
    unknown_user_hash(state.app.config["PASSWORD_HASH_METHOD"])


def issue_token(user_id: int) -> str:
    """Return a signed HS256 token for ``user_id`` that expires after the configured lifetime."""
    expires = datetime.now(timezone.utc) + timedelta(seconds=current_app.config["JWT_TTL_SECONDS"])
    return jwt.encode({"user_id": user_id, "exp": expires}, current_app.config["SECRET_KEY"], algorithm="HS256")


def caller_id() -> int:
    """Return the id of the authenticated caller.

    :raises Unauthorized: when the bearer token is missing, malformed, expired or lacks ``exp``.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authentication required")
    try:
        claims = jwt.decode(token.strip(), current_app.config["SECRET_KEY"], algorithms=["HS256"],
                            options={"require": ["exp", "user_id"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("Token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("Invalid token") from None
    user_id = claims["user_id"]
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 1 <= user_id <= MAX_ID:
        raise Unauthorized("Invalid token")  # signed by us or not, never an out-of-range SQL parameter
    request.environ[USER_ID] = user_id  # for the access log
    return user_id


def require_owner(user_id: int) -> int:
    """Return the caller's id if the caller is ``user_id``.

    :raises Forbidden: when the caller is someone else.
    """
    caller = caller_id()
    if caller != user_id:
        raise Forbidden("You can only change your own profile")
    return caller


@bp.post("/register")
def register() -> Response:
    data = RegisterSchema().load(json_body())
    email = data["email"].lower()
    taken = db.session.execute(
        select(User.email, User.username)
        .where(or_(User.email == email, User.username == data["username"]))
    ).first()
    if taken is not None:
        raise Conflict("Email or username already registered",
                       {"email" if taken.email == email else "username": ["Already registered."]})
    user = User(email=email, username=data["username"], display_name=data["username"], bio="",
                password_hash=generate_password_hash(data["password"],
                                                     method=current_app.config["PASSWORD_HASH_METHOD"]))
    db.session.add(user)
    try:
        commit_write()
    except IntegrityError:
        # Lost a race with a concurrent registration of the same email or username.
        db.session.rollback()
        raise Conflict("Email or username already registered") from None
    return json_response({"user_id": user.id, "token": issue_token(user.id)}, 201)


@bp.post("/login")
def login() -> Response:
    data = LoginSchema().load(json_body())
    user = db.session.scalars(select(User).where(User.email == func.lower(data["email"]))).first()
    # Same method and cost as a real hash (unless the user's was made under an older setting).
    password_hash = user.password_hash if user else unknown_user_hash(current_app.config["PASSWORD_HASH_METHOD"])
    if not check_password_hash(password_hash, data["password"]) or user is None:
        raise Unauthorized("Invalid email or password")
    return json_response({"user_id": user.id, "token": issue_token(user.id)})
