"""Key rotation for the encrypted case fields.

Rotation re-encrypts every field with the newest key of the ring, and moves
the keyed digests of exclusions to the newest key; after it, the old keys can
be retired, which ``retirable`` checks by reading every field with the newest
key alone."""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing, KeyRingError

ENCRYPTED = (
    (orm.cases, "id", ("narrative_enc", "survivor_name_enc", "place_enc", "perpetrator_relationship_enc",
                       "classification_answers_enc")),
    (orm.plan_steps, "id", ("note_enc",)),
)


def rotate(session: Session, keyring: KeyRing, batch: int = 500) -> int:
    """Re-encrypt every encrypted field with the newest key; returns rows rewritten."""
    rewritten = 0
    for table, key, columns in ENCRYPTED:
        last = None
        while True:
            query = select(table.c[key], *(table.c[c] for c in columns)).order_by(table.c[key]).limit(batch)
            if last is not None:
                query = query.where(table.c[key] > last)
            rows = session.execute(query).all()
            if not rows:
                break
            for row in rows:
                values = {c: keyring.rotate(getattr(row, c)) for c in columns if getattr(row, c) is not None}
                if values:
                    session.execute(update(table).where(table.c[key] == row[0]).values(**values))
                    rewritten += 1
            session.commit()
            last = rows[-1][0]
    return rewritten + _rotate_exclusions(session, keyring, batch)


def _rotate_exclusions(session: Session, keyring: KeyRing, batch: int) -> int:
    """Each exclusion's id under the newest key, and its digest too (the
    digest is part of the row's key: the rows are read first, then moved)."""
    t = orm.case_exclusions
    rows = session.execute(select(t.c.case_id, t.c.user_digest, t.c.user_id_enc)).all()
    for n, row in enumerate(rows, 1):
        user_id = keyring.decrypt(row.user_id_enc)
        session.execute(update(t).where(t.c.case_id == row.case_id, t.c.user_digest == row.user_digest).values(
            user_digest=keyring.digest(user_id), user_id_enc=keyring.rotate(row.user_id_enc)))
        if n % batch == 0:
            session.commit()
    session.commit()
    return len(rows)


def retirable(session: Session, newest: KeyRing) -> bool:
    """True when every encrypted field reads with ``newest`` alone, and
    every exclusion is found by its digest under it."""
    for table, _, columns in ENCRYPTED:
        for column in columns:
            for value in session.execute(select(table.c[column]).where(table.c[column].is_not(None))).scalars():
                try:
                    newest.decrypt(value)
                except KeyRingError:
                    return False
    t = orm.case_exclusions
    for row in session.execute(select(t.c.user_digest, t.c.user_id_enc)):
        try:
            if newest.digest(newest.decrypt(row.user_id_enc)) != row.user_digest:
                return False
        except KeyRingError:
            return False
    return True
