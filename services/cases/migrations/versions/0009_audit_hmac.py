"""audit trail: HMAC chains, one per case, with heads per chain

Entries written before this revision were chained with plain SHA-256 per
organisation. The upgrade first checks that chain as it stands (every hash,
every link, the recorded heads) and refuses to run if it is broken: it never
signs entries that were already altered. It then re-signs every entry, in
its original order, with the newest audit key (AUDIT_KEYS, AUDIT_KEYS_FILE or
audit.keys in WARMI_HOME; `warmi run` and `warmi keys init` make a local
one), each case's entries as that case's chain. With no entry to re-sign, no
key is needed. From then on the old entries verify like any other.

Revision ID: 0009
Revises: 0008
"""
import hashlib
import json
from datetime import timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from servicekit.types import UtcDateTime

revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

GENESIS = "0" * 64


def _sha_entry(prev_hash: str, *, case_id, organization_id, actor_id, action, fields, at) -> str:
    """The hash of the previous trail (services/cases/domain/audit.py before 0009)."""
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    body = json.dumps({
        "prev": prev_hash, "case_id": case_id, "organization_id": organization_id, "actor_id": actor_id,
        "action": action, "fields": fields, "at": at.astimezone(timezone.utc).isoformat(),
    }, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _old_tables():
    meta = sa.MetaData()
    log = sa.Table(
        "audit_log", meta,
        sa.Column("id", sa.Integer, primary_key=True), sa.Column("case_id", sa.String(36)),
        sa.Column("organization_id", sa.String(36)), sa.Column("actor_id", sa.String(36)),
        sa.Column("action", sa.String(32)), sa.Column("fields", sa.Text), sa.Column("at", UtcDateTime()),
        sa.Column("prev_hash", sa.String(64)), sa.Column("hash", sa.String(64)),
    )
    heads = sa.Table("audit_heads", meta, sa.Column("organization_id", sa.String(36), primary_key=True),
                     sa.Column("last_hash", sa.String(64)))
    return log, heads


def _new_tables():
    meta = sa.MetaData()
    log = sa.Table(
        "audit_log", meta,
        sa.Column("id", sa.Integer, primary_key=True), sa.Column("chain", sa.String(64)),
        sa.Column("position", sa.Integer), sa.Column("at", UtcDateTime()), sa.Column("actor_id", sa.String(64)),
        sa.Column("action", sa.String(32)), sa.Column("case_id", sa.String(64)),
        sa.Column("organization_id", sa.String(64)), sa.Column("detail", sa.Text), sa.Column("key_id", sa.String(64)),
        sa.Column("prev_mac", sa.String(64)), sa.Column("mac", sa.String(64)),
    )
    heads = sa.Table("audit_heads", meta, sa.Column("chain", sa.String(64), primary_key=True),
                     sa.Column("position", sa.Integer), sa.Column("mac", sa.String(64)))
    return log, heads


def _check_legacy(rows, old_heads: dict) -> None:
    last: dict[str, str] = {}
    broken = []
    for row in rows:
        previous = last.get(row.organization_id, GENESIS)
        expected = _sha_entry(previous, case_id=row.case_id, organization_id=row.organization_id,
                              actor_id=row.actor_id, action=row.action, fields=row.fields, at=row.at)
        if row.prev_hash != previous or row.hash != expected:
            broken.append(f"organisation {row.organization_id}: entry {row.id}")
            last[row.organization_id] = "broken"
            continue
        last[row.organization_id] = row.hash
    for organization_id in set(old_heads) | set(last):
        if last.get(organization_id, GENESIS) not in ("broken", old_heads.get(organization_id, GENESIS)):
            broken.append(f"organisation {organization_id}: the chain ends before its recorded head")
    if broken:
        raise RuntimeError(
            "the audit trail was altered before this upgrade, so it is not re-signed: "
            + "; ".join(sorted(set(broken))[:20])
            + ". Restore the cases database from a backup taken before the alteration, then upgrade."
        )


def upgrade() -> None:
    from servicekit.audit import AuditKeyError, AuditKeys, sign_entry

    bind = op.get_bind()
    old_log, old_heads = _old_tables()
    rows = bind.execute(sa.select(old_log).order_by(old_log.c.id)).all()
    keys = None
    if rows:
        _check_legacy(rows, dict(bind.execute(sa.select(old_heads.c.organization_id, old_heads.c.last_hash)).all()))
        try:
            keys = AuditKeys.configured()
        except AuditKeyError as err:
            raise RuntimeError(f"{err}: the audit trail's entries are re-signed with it during this upgrade") from None

    op.drop_table('audit_heads')
    op.create_table(
        'audit_heads',
        sa.Column('chain', sa.String(length=64), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('mac', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('chain'),
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_case_id')
        batch_op.add_column(sa.Column('chain', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('position', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('key_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('prev_mac', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('mac', sa.String(length=64), nullable=True))
        batch_op.alter_column('fields', new_column_name='detail', existing_type=sa.Text(), existing_nullable=False)
        batch_op.alter_column('actor_id', type_=sa.String(length=64), existing_type=sa.String(length=36),
                              existing_nullable=False)
        batch_op.alter_column('case_id', type_=sa.String(length=64), existing_type=sa.String(length=36),
                              nullable=True)
        batch_op.alter_column('organization_id', type_=sa.String(length=64), existing_type=sa.String(length=36),
                              nullable=True)
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('hash')

    if rows:
        new_log, new_heads = _new_tables()
        heads: dict[str, tuple[int, str]] = {}
        updates = []
        for row in rows:
            chain = row.case_id
            position, prev_mac = heads.get(chain, (0, GENESIS))
            position += 1
            key_id, mac = sign_entry(
                keys, "cases", chain=chain, position=position, at=row.at, actor_id=row.actor_id, action=row.action,
                subjects={"case_id": row.case_id, "organization_id": row.organization_id}, detail=row.fields or "",
                prev_mac=prev_mac,
            )
            heads[chain] = (position, mac)
            updates.append({"entry_id": row.id, "b_chain": chain, "b_position": position, "b_key_id": key_id,
                            "b_prev_mac": prev_mac, "b_mac": mac})
        bind.execute(
            new_log.update().where(new_log.c.id == sa.bindparam("entry_id")).values(
                chain=sa.bindparam("b_chain"), position=sa.bindparam("b_position"), key_id=sa.bindparam("b_key_id"),
                prev_mac=sa.bindparam("b_prev_mac"), mac=sa.bindparam("b_mac"),
            ),
            updates,
        )
        bind.execute(new_heads.insert(), [{"chain": c, "position": p, "mac": m} for c, (p, m) in heads.items()])

    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        for name, type_ in (('chain', sa.String(length=64)), ('position', sa.Integer()),
                            ('key_id', sa.String(length=64)), ('prev_mac', sa.String(length=64)),
                            ('mac', sa.String(length=64))):
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.create_unique_constraint('uq_audit_log_chain_position', ['chain', 'position'])


def downgrade() -> None:
    """Back to one SHA-256 chain per organisation, recomputed from the entries
    (whose MACs are not checked here: run `warmi audit verify` first).
    Operators' entries have no case, and no place in that trail."""
    bind = op.get_bind()
    new_log, _ = _new_tables()
    if bind.execute(sa.select(sa.func.count()).select_from(new_log).where(new_log.c.case_id.is_(None))).scalar():
        raise RuntimeError("the trail holds operators' entries, which the older trail cannot hold; not downgraded")
    rows = bind.execute(sa.select(new_log).order_by(new_log.c.id)).all()

    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_log_chain_position', type_='unique')
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hash', sa.String(length=64), nullable=True))
        batch_op.alter_column('detail', new_column_name='fields', existing_type=sa.Text(), existing_nullable=False)
        batch_op.alter_column('actor_id', type_=sa.String(length=36), existing_type=sa.String(length=64),
                              existing_nullable=False)
        batch_op.alter_column('case_id', type_=sa.String(length=36), existing_type=sa.String(length=64),
                              nullable=False)
        batch_op.alter_column('organization_id', type_=sa.String(length=36), existing_type=sa.String(length=64),
                              nullable=False)
        batch_op.drop_column('mac')
        batch_op.drop_column('prev_mac')
        batch_op.drop_column('key_id')
        batch_op.drop_column('position')
        batch_op.drop_column('chain')
        batch_op.create_index('ix_audit_log_case_id', ['case_id'], unique=False)
    op.drop_table('audit_heads')
    op.create_table(
        'audit_heads',
        sa.Column('organization_id', sa.String(length=36), nullable=False),
        sa.Column('last_hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('organization_id'),
    )
    old_log, old_heads = _old_tables()
    last: dict[str, str] = {}
    updates = []
    for row in rows:
        previous = last.get(row.organization_id, GENESIS)
        digest = _sha_entry(previous, case_id=row.case_id, organization_id=row.organization_id,
                            actor_id=row.actor_id, action=row.action, fields=row.detail, at=row.at)
        updates.append({"entry_id": row.id, "b_prev_hash": previous, "b_hash": digest})
        last[row.organization_id] = digest
    if updates:
        bind.execute(old_log.update().where(old_log.c.id == sa.bindparam("entry_id")).values(
            prev_hash=sa.bindparam("b_prev_hash"), hash=sa.bindparam("b_hash")), updates)
        bind.execute(old_heads.insert(), [{"organization_id": o, "last_hash": h} for o, h in last.items()])
