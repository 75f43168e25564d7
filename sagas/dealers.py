"""The delivery people, as operators manage them through the door."""

from sqlalchemy import Engine

from domain.views import DealerView, NewDealer
from sagas.errors import DealerExistsError
from sagas.views import dealer_view
from services import deliveries
from store.db import session


def add_dealer(engine: Engine, dealer: NewDealer) -> DealerView:
    """Add a dealer (committed); :class:`DealerExistsError` if the phone number is taken."""
    with session(engine) as db:
        row, added = deliveries.add_dealer(
            db, dealer.name, dealer.phone, dealer.province, dealer.city, dealer.capacity
        )
        db.commit()
    if not added:
        raise DealerExistsError(f"a dealer with phone {dealer.phone} exists already")
    return dealer_view(row)
