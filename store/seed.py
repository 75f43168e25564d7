"""Demo dealers, inserted idempotently (the phone number is unique)."""

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from store.db import session
from store.models import DealerRow, new_dealer

DEMO_DEALERS = [
    ("Ana Dealer", "+98-21-0001", "Tehran", "Tehran", 5),
    ("Bahram Courier", "+98-21-0002", "Tehran", "Tehran", 3),
    ("Cyrus Express", "+98-31-0001", "Isfahan", "Isfahan", 2),
    ("Dara Parcel", "+98-51-0001", "Razavi Khorasan", "Mashhad", 2),
]


def seed_dealers(engine: Engine) -> int:
    """Insert the demo dealers that are missing; returns how many were inserted."""
    inserted = 0
    for name, phone, province, city, capacity in DEMO_DEALERS:
        with session(engine) as db:
            if db.exec(select(DealerRow).where(DealerRow.phone == phone)).first() is not None:
                continue
            db.add(new_dealer(name, phone, province, city, capacity))
            try:
                db.commit()
                inserted += 1
            except IntegrityError:
                db.rollback()
    return inserted
