"""Key rotation for the encrypted case fields.

Rotation re-encrypts every field with the newest key of the ring; after it,
the old keys can be retired, which ``retirable`` checks by reading every
field with the newest key alone."""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing, KeyRingError

ENCRYPTED = (
    (orm.cases, "id", ("narrative_enc", "survivor_name_enc")),
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
    return rewritten


def retirable(session: Session, newest: KeyRing) -> bool:
    """True when every encrypted field reads with ``newest`` alone."""
    for table, _, columns in ENCRYPTED:
        for column in columns:
            for value in session.execute(select(table.c[column]).where(table.c[column].is_not(None))).scalars():
                try:
                    newest.decrypt(value)
                except KeyRingError:
                    return False
    return True
