"""Dealers: the delivery people DeliveryService assigns parcels to, as operators add them.

Plain functions over a session that do not commit: the caller owns the transaction.
"""

from sqlmodel import Session

from domain.views import NewDealer
from services.rows import insert_new
from store.models import DealerRow, new_dealer


class DealerExistsError(Exception):
    """A dealer with this phone number exists already (the message says which, for a person)."""


def add_dealer(db: Session, dealer: NewDealer) -> DealerRow:
    """Add ``dealer``, serving its province and city with its capacity: its row, with the id
    the database gave it. The phone number is unique: :class:`DealerExistsError` when it is
    taken, by an earlier or a concurrent add (one insert either way), and nothing is added.
    """
    row = new_dealer(dealer.name, dealer.phone, dealer.province, dealer.city, dealer.capacity)
    if not insert_new(db, row):
        raise DealerExistsError(f"a dealer with phone {dealer.phone} exists already")
    return row
