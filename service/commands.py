"""Flask CLI commands: ``flask create-user`` and ``flask seed``."""
from __future__ import annotations

import io
import random
import time
from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from PIL import Image, ImageDraw
from sqlalchemy import func, insert, select
from werkzeug.security import generate_password_hash

from models import Flyer, FlyerImage, User, db
from service.extension import services

BATCH = 5000
WORDS = ("bakery sale fresh bread market vintage books concert jazz yoga class garden flea "
         "repair cafe pizza night open studio kids workshop bike tour farmers cheese wine "
         "tasting street festival poetry reading swap meet coffee cupping").split()
STREETS = ("Bahnhofstrasse", "Langstrasse", "Seefeldstrasse", "Limmatquai", "Rosengasse",
           "Niederdorfstrasse", "Badenerstrasse", "Hardturmstrasse", "Universitätstrasse")


def register_commands(app: Flask) -> None:
    app.cli.add_command(create_user)
    app.cli.add_command(seed)
    app.cli.add_command(purge_idempotency_keys)


@click.command("create-user")
@with_appcontext
@click.option("--email", required=True)
@click.option("--username", required=True)
@click.option("--password", required=True, prompt=True, hide_input=True)
@click.option("--display-name", default=None)
def create_user(email: str, username: str, password: str, display_name: str | None) -> None:
    """Create a user account."""
    from service.schemas import RegisterSchema
    RegisterSchema().load({"email": email, "username": username, "password": password})
    user = User(email=email.lower(), username=username, display_name=display_name or username, bio="",
                password_hash=generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"]))
    db.session.add(user)
    db.session.commit()
    click.echo(f"created user {user.id} ({username})")


def _demo_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(60, 230) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse((x - 60, y - 60, x + 60, y + 60), fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue()


def _demo_media() -> tuple[list[tuple[str, str]], list[str]]:
    """Store a few demo avatars and flyer images, returning their storage keys."""
    storage = services().storage
    avatars = [(storage.put("avatars/demo", _demo_jpeg(n, (500, 500))),
                storage.put("avatars/demo", _demo_jpeg(n, (128, 128)), "_128")) for n in range(8)]
    images = [storage.put("flyers/demo", _demo_jpeg(100 + n, (1024, 768))) for n in range(8)]
    return avatars, images


@click.command("seed")
@with_appcontext
@click.option("--users", default=200, show_default=True, help="Number of users to create.")
@click.option("--flyers-per-user", default=5, show_default=True, help="Flyers for each ordinary user.")
@click.option("--big-creators", default=5, show_default=True, help="Users that get --big-flyers flyers each.")
@click.option("--big-flyers", default=150, show_default=True, help="Flyers for each big creator.")
@click.option("--creators", default=0, show_default=True,
              help="Users after the big creators that get --flyers-min to --flyers-max flyers each.")
@click.option("--flyers-min", default=100, show_default=True, help="Fewest flyers of a --creators user.")
@click.option("--flyers-max", default=300, show_default=True, help="Most flyers of a --creators user.")
@click.option("--giant-flyers", multiple=True, type=click.IntRange(min=0),
              help="One creator with exactly this many flyers; repeat for more (they are the first users).")
@click.option("--if-empty", is_flag=True, help="Do nothing when the database already has users.")
@click.option("--seed", "seed_value", default=1, show_default=True, help="Random seed.")
def seed(users: int, flyers_per_user: int, big_creators: int, big_flyers: int, creators: int,
         flyers_min: int, flyers_max: int, giant_flyers: tuple[int, ...], if_empty: bool,
         seed_value: int) -> None:
    """Fill the database with realistic demo data, fast (bulk inserts).

    Users get their flyers in this order: one per --giant-flyers value, then --big-creators
    with --big-flyers each, then --creators with --flyers-min..--flyers-max each, and every
    other user --flyers-per-user.
    """
    if not 0 <= flyers_min <= flyers_max:
        raise click.BadParameter("need 0 <= --flyers-min <= --flyers-max", param_hint="--flyers-min")
    if if_empty and db.session.scalar(select(func.count(User.id))):
        click.echo("database already has users; not seeding")
        return
    started = time.perf_counter()
    rng = random.Random(seed_value)
    now = services().clock().replace(microsecond=0)
    avatars, images = _demo_media()
    password = generate_password_hash("password123", method=current_app.config["PASSWORD_HASH_METHOD"])
    first_id = (db.session.scalar(select(func.max(User.id))) or 0) + 1
    tag = f"{seed_value}_{first_id}"
    user_rows = []
    for n in range(users):
        avatar = rng.choice(avatars) if rng.random() < 0.6 else (None, None)
        user_rows.append({
            "email": f"user{n}_{tag}@example.com", "username": f"user{n}_{tag}"[:30],
            "password_hash": password, "display_name": f"Demo user {n}",
            "bio": f"{rng.choice(WORDS).title()} lover from Zurich.",
            "picture_key": avatar[0], "thumbnail_key": avatar[1],
            "created_at": now - timedelta(days=90), "updated_at": now - timedelta(days=90)})
    db.session.execute(insert(User), user_rows)
    user_ids = list(db.session.scalars(select(User.id).where(User.id >= first_id).order_by(User.id)))

    counts = [*giant_flyers, *[big_flyers] * big_creators]
    counts += [rng.randint(flyers_min, flyers_max) for _ in range(creators)]
    plan = [(uid, counts[index] if index < len(counts) else flyers_per_user)
            for index, uid in enumerate(user_ids)]
    total = sum(count for _, count in plan)
    first_flyer = (db.session.scalar(select(func.max(Flyer.id))) or 0) + 1
    flyer_rows: list[dict] = []
    image_rows: list[dict] = []
    next_id = first_flyer
    with click.progressbar(length=total, label="flyers") as bar:
        for uid, count in plan:
            for _ in range(count):
                flyer_rows.append(_demo_flyer(rng, next_id, uid, now))
                image_rows.append({"flyer_id": next_id, "order": 0, "storage_key": rng.choice(images)})
                next_id += 1
                if len(flyer_rows) == BATCH:
                    _insert(flyer_rows, image_rows, bar)
        _insert(flyer_rows, image_rows, bar)
    db.session.commit()
    _fix_sequences()
    click.echo(f"seeded {users} users and {total} flyers in {time.perf_counter() - started:.1f} s")


def _demo_flyer(rng: random.Random, flyer_id: int, creator_id: int, now) -> dict:
    created = now - timedelta(seconds=rng.randrange(60 * 86400))
    roll = rng.random()  # mostly valid now, some upcoming, some expired
    start = created if roll < 0.85 else now + timedelta(hours=rng.randrange(1, 72))
    end = (now - timedelta(hours=rng.randrange(1, 48)) if 0.85 <= roll < 0.92
           else start + timedelta(days=rng.randrange(14, 90)))
    return {
        "id": flyer_id, "creator_id": creator_id,
        "title": f"{rng.choice(WORDS).title()} {rng.choice(WORDS)}",
        "description": " ".join(rng.choice(WORDS) for _ in range(20)),
        "location_address": f"{rng.choice(STREETS)} {rng.randrange(1, 200)}, Zurich",
        "lat": 47.37 + rng.uniform(-0.05, 0.05), "lng": 8.54 + rng.uniform(-0.05, 0.05),
        "valid_from": min(start, end - timedelta(hours=1)), "valid_until": end,
        "created_at": created, "updated_at": created}


def _insert(flyer_rows: list[dict], image_rows: list[dict], bar) -> None:
    if flyer_rows:
        db.session.execute(insert(Flyer), flyer_rows)
        db.session.execute(insert(FlyerImage), image_rows)
        bar.update(len(flyer_rows))
        flyer_rows.clear()
        image_rows.clear()


def _fix_sequences() -> None:
    """Move PostgreSQL's id sequence past the explicit ids the bulk insert used."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(db.text(
            "SELECT setval(pg_get_serial_sequence('flyers', 'id'), (SELECT MAX(id) FROM flyers))"))
        db.session.commit()


@click.command("purge-idempotency-keys")
@with_appcontext
def purge_idempotency_keys() -> None:
    """Delete expired Idempotency-Keys and commit markers (requests also purge them, once a minute per process)."""
    from service.idempotency import purge_expired
    total = 0
    while deleted := purge_expired(services().clock()):
        total += deleted
    click.echo(f"deleted {total} expired idempotency records")
