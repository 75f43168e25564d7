"""Dealers: the delivery people operators add; functions that do not commit."""

from sqlmodel import Session

from domain.views import NewDealer
from services.rows import insert_new
from store.models import DealerRow, new_dealer


class DealerExistsError(Exception):
    """A dealer with this phone number exists already (the message says which, for a person)."""


def add_dealer(db: Session, dealer: NewDealer) -> DealerRow:
    """Add ``dealer`` and return its row, with its id. :class:`DealerExistsError` when its
    phone number is taken (also by a concurrent add); nothing is added then.
    """
    row = new_dealer(dealer.name, dealer.phone, dealer.province, dealer.city, dealer.capacity)
    if not insert_new(db, row):
        raise DealerExistsError(f"a dealer with phone {dealer.phone} exists already")
    return row
