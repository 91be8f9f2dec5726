"""users, flyers and flyer images

Revision ID: 9c67e8a56056
Revises: 
Create Date: 2026-11-22 01:18:12.163656

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9c67e8a56056'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('username', sa.String(length=30), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('display_name', sa.String(length=50), nullable=False),
    sa.Column('bio', sa.Text(), nullable=False),
    sa.Column('picture_key', sa.String(length=255), nullable=True),
    sa.Column('thumbnail_key', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('flyers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('creator_id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('location_address', sa.String(length=500), nullable=False),
    sa.Column('lat', sa.Float(), nullable=False),
    sa.Column('lng', sa.Float(), nullable=False),
    sa.Column('valid_from', sa.DateTime(), nullable=False),
    sa.Column('valid_until', sa.DateTime(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['creator_id'], ['users.id'], name=op.f('fk_flyers_creator_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flyers'))
    )
    with op.batch_alter_table('flyers', schema=None) as batch_op:
        batch_op.create_index('ix_flyers_creator_validity', ['creator_id', 'valid_until', 'valid_from'], unique=False)
        # The creator page walks this index newest first (autogenerate cannot see expression indexes).
        batch_op.create_index('ix_flyers_creator_created',
                              ['creator_id', sa.text('created_at DESC'), sa.text('id DESC')], unique=False)

    op.create_table('flyer_images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('flyer_id', sa.Integer(), nullable=False),
    sa.Column('order', sa.Integer(), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['flyer_id'], ['flyers.id'], name=op.f('fk_flyer_images_flyer_id_flyers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flyer_images'))
    )
    with op.batch_alter_table('flyer_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flyer_images_flyer_id'), ['flyer_id'], unique=False)



def downgrade():
    with op.batch_alter_table('flyer_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flyer_images_flyer_id'))

    op.drop_table('flyer_images')
    with op.batch_alter_table('flyers', schema=None) as batch_op:
        batch_op.drop_index('ix_flyers_creator_validity')
        batch_op.drop_index('ix_flyers_creator_created')

    op.drop_table('flyers')
    op.drop_table('users')
