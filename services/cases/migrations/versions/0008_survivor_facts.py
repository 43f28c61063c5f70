"""survivor facts at rest: place, perpetrator relationship, classification
answers and the users excluded from a case are encrypted with the cases key
ring (exclusions found by a keyed digest); every plan step gets an opaque
reference for its events

Existing rows are converted, then the plaintext columns are dropped. The key
ring comes from the same settings as the service's: ``CASES_ENCRYPTION_KEYS``,
else ``CASES_ENCRYPTION_KEYS_FILE``, else ``<WARMI_HOME>/cases.keys``. With
rows to convert and no key, the migration stops before it changes anything.

Revision ID: 0008
Revises: 0007
"""
import json
import os
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# as services.cases.adapters.repository pads them: codes and answers all the same length
CODE_PAD, ANSWERS_PAD = 32, 256
BATCH = 500

cases = sa.table(
    'cases', sa.column('id', sa.String),
    sa.column('place', sa.String), sa.column('perpetrator_relationship', sa.String),
    sa.column('classification_answers', sa.Text),
    sa.column('place_enc', sa.Text), sa.column('perpetrator_relationship_enc', sa.Text),
    sa.column('classification_answers_enc', sa.Text),
)
plan_steps = sa.table('plan_steps', sa.column('id', sa.Integer), sa.column('ref', sa.String))


def _keyring():
    """The service's key ring, or a clear refusal."""
    from servicekit.config import home
    from services.cases.adapters.crypto import KeyRing, KeyRingError

    given = context.config.attributes.get('keyring')
    if given is not None:
        return given
    keys_file = os.environ.get('CASES_ENCRYPTION_KEYS_FILE') or str(home() / 'cases.keys')
    try:
        return KeyRing.from_settings(os.environ.get('CASES_ENCRYPTION_KEYS'), keys_file)
    except KeyRingError as err:
        raise RuntimeError(
            'cases revision 0008 encrypts the place, perpetrator relationship, classification answers and '
            'exclusions of the cases already stored, and needs the cases key ring for it: ' + str(err)
        ) from None


def _exclusion_table(plaintext: bool):
    return (
        sa.Column('case_id', sa.String(length=36), sa.ForeignKey('cases.id'), nullable=False),
        *((sa.Column('user_id', sa.String(length=36), nullable=False),) if plaintext else (
            sa.Column('user_digest', sa.String(length=64), nullable=False),
            sa.Column('user_id_enc', sa.Text(), nullable=False))),
        sa.Column('excluded_by', sa.String(length=36), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('case_id', 'user_id' if plaintext else 'user_digest'),
    )


def _random_refs(bind) -> None:
    if bind.dialect.name == 'postgresql':
        op.execute("UPDATE plan_steps SET ref = substr(md5(random()::text || clock_timestamp()::text || id::text), 1, 16)"
                   " WHERE ref IS NULL")
    else:
        op.execute("UPDATE plan_steps SET ref = lower(hex(randomblob(8))) WHERE ref IS NULL")


def upgrade() -> None:
    bind = op.get_bind()
    facts = bind.execute(sa.text(
        'SELECT count(*) FROM cases WHERE place IS NOT NULL OR perpetrator_relationship IS NOT NULL '
        'OR classification_answers IS NOT NULL')).scalar()
    excluded = bind.execute(sa.text('SELECT case_id, user_id, excluded_by, at FROM case_exclusions')).all()
    keyring = _keyring() if facts or excluded else None  # before anything changes

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('place_enc', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('perpetrator_relationship_enc', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('classification_answers_enc', sa.Text(), nullable=True))
    last = ''
    while facts:
        rows = bind.execute(
            sa.select(cases.c.id, cases.c.place, cases.c.perpetrator_relationship, cases.c.classification_answers)
            .where(cases.c.id > last, sa.or_(cases.c.place.is_not(None), cases.c.perpetrator_relationship.is_not(None),
                                              cases.c.classification_answers.is_not(None)))
            .order_by(cases.c.id).limit(BATCH)).all()
        if not rows:
            break
        converted = []
        for row in rows:
            answers = row.classification_answers
            if answers is not None:  # the service's own form: keys sorted
                answers = json.dumps(json.loads(answers), sort_keys=True)
            converted.append({
                'row_id': row.id, 'new_place': keyring.encrypt(row.place, pad_to=CODE_PAD),
                'new_relationship': keyring.encrypt(row.perpetrator_relationship, pad_to=CODE_PAD),
                'new_answers': keyring.encrypt(answers, pad_to=ANSWERS_PAD)})
        bind.execute(sa.update(cases).where(cases.c.id == sa.bindparam('row_id')).values(
            place_enc=sa.bindparam('new_place'), perpetrator_relationship_enc=sa.bindparam('new_relationship'),
            classification_answers_enc=sa.bindparam('new_answers')), converted)
        last = rows[-1].id
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('place')
        batch_op.drop_column('perpetrator_relationship')
        batch_op.drop_column('classification_answers')

    # the key of the table changes: a new table, the rows converted into it
    op.drop_table('case_exclusions')
    op.create_table('case_exclusions', *_exclusion_table(plaintext=False))
    if excluded:  # ``at`` goes back as it was read: no type processing either way
        bind.execute(sa.text(
            'INSERT INTO case_exclusions (case_id, user_digest, user_id_enc, excluded_by, at) '
            'VALUES (:case_id, :user_digest, :user_id_enc, :excluded_by, :at)'), [
            {'case_id': r.case_id, 'user_digest': keyring.digest(r.user_id), 'user_id_enc': keyring.encrypt(r.user_id),
             'excluded_by': r.excluded_by, 'at': r.at}
            for r in excluded])

    with op.batch_alter_table('plan_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ref', sa.String(length=16), nullable=True))
    _random_refs(bind)
    with op.batch_alter_table('plan_steps', schema=None) as batch_op:
        batch_op.alter_column('ref', existing_type=sa.String(length=16), nullable=False)


def downgrade() -> None:
    bind = op.get_bind()
    facts = bind.execute(sa.text(
        'SELECT count(*) FROM cases WHERE place_enc IS NOT NULL OR perpetrator_relationship_enc IS NOT NULL '
        'OR classification_answers_enc IS NOT NULL')).scalar()
    excluded = bind.execute(sa.text('SELECT case_id, user_id_enc, excluded_by, at FROM case_exclusions')).all()
    keyring = _keyring() if facts or excluded else None

    with op.batch_alter_table('plan_steps', schema=None) as batch_op:
        batch_op.drop_column('ref')

    op.drop_table('case_exclusions')
    op.create_table('case_exclusions', *_exclusion_table(plaintext=True))
    if excluded:
        bind.execute(sa.text(
            'INSERT INTO case_exclusions (case_id, user_id, excluded_by, at) '
            'VALUES (:case_id, :user_id, :excluded_by, :at)'), [
            {'case_id': r.case_id, 'user_id': keyring.decrypt(r.user_id_enc), 'excluded_by': r.excluded_by, 'at': r.at}
            for r in excluded])

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('place', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('perpetrator_relationship', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('classification_answers', sa.Text(), nullable=True))
    if facts:
        rows = bind.execute(sa.select(cases.c.id, cases.c.place_enc, cases.c.perpetrator_relationship_enc,
                                      cases.c.classification_answers_enc)).all()
        for row in rows:
            bind.execute(sa.update(cases).where(cases.c.id == row.id).values(
                place=keyring.decrypt(row.place_enc, padded=True),
                perpetrator_relationship=keyring.decrypt(row.perpetrator_relationship_enc, padded=True),
                classification_answers=keyring.decrypt(row.classification_answers_enc, padded=True)))
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('place_enc')
        batch_op.drop_column('perpetrator_relationship_enc')
        batch_op.drop_column('classification_answers_enc')

