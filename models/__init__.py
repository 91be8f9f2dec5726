"""SQL models of the profile service and the queries that read them."""
from models.base import db
from models.flyer import Flyer, FlyerImage
from models.idempotency import IdempotencyRecord
from models.user import User

__all__ = ["db", "User", "Flyer", "FlyerImage", "IdempotencyRecord"]
