"""SQL models of the profile service and the queries that read them."""
from models.base import db
from models.flyer import Flyer, FlyerImage
from models.idempotency import IdempotencyRecord
from models.outbox import CacheOutbox
from models.user import User

__all__ = ["db", "CacheOutbox", "User", "Flyer", "FlyerImage", "IdempotencyRecord"]
