"""cache outbox table and the triggers that fill it

Revision ID: b7c1e0a9d4f2
Revises: 9c67e8a56056
Create Date: 2026-11-29 19:00:00

"""
from alembic import op
import sqlalchemy as sa

from models.outbox import create_triggers

revision = 'b7c1e0a9d4f2'
down_revision = '9c67e8a56056'
branch_labels = None
depends_on = None

TABLES = ("users", "flyers", "flyer_images")


def upgrade():
    op.create_table('cache_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('flyer_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('delivered', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cache_outbox'))
    )
    with op.batch_alter_table('cache_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_cache_outbox_delivered_id', ['delivered', 'id'], unique=False)
        batch_op.create_index('ix_cache_outbox_created_at', ['created_at'], unique=False)
    create_triggers(op.get_bind())


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS pf_outbox ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS pf_outbox_{table}()")
    else:
        for table in TABLES:
            for action in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS pf_outbox_{table}_{action}")
    op.drop_table('cache_outbox')
