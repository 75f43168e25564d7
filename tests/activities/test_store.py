"""The store beneath the activities: seeding and the database's own guards."""

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from store.db import migrate, session
from store.models import DealerRow, place_key
from store.seed import DEMO_DEALERS, seed_dealers
from tests.activities.support import all_rows, dealer_loads, run_concurrently
from tests.saga_harness import add_dealer

pytestmark = pytest.mark.db


def test_seed_dealers_twice_inserts_each_dealer_once(engine):
    assert seed_dealers(engine) == len(DEMO_DEALERS)
    migrate(engine)  # idempotent too
    assert seed_dealers(engine) == 0

    dealers = all_rows(engine, DealerRow)
    assert sorted(d.phone for d in dealers) == sorted(d[1] for d in DEMO_DEALERS)
    for dealer in dealers:
        assert dealer.province_key == place_key(dealer.province)
        assert dealer.city_key == place_key(dealer.city)
        assert dealer.active_deliveries == 0


def test_concurrent_seeding_inserts_each_dealer_once(engine):
    inserted = run_concurrently(seed_dealers, [engine] * 8, threads=8)

    assert sum(inserted) == len(DEMO_DEALERS)
    assert len(all_rows(engine, DealerRow)) == len(DEMO_DEALERS)


@pytest.mark.parametrize(
    ("name", "key"),
    [("Tehran", "tehran"), ("  tEhRaN ", "tehran"), ("Razavi \t  Khorasan", "razavi khorasan")],
)
def test_place_key_ignores_case_and_spacing(name, key):
    assert place_key(name) == key


@pytest.mark.parametrize("load", [-1, 3])
def test_database_refuses_an_overbooked_or_negative_dealer(engine, load):
    dealer = add_dealer(engine, capacity=2)

    statement = update(DealerRow).where(col(DealerRow.id) == dealer)
    with session(engine) as db, pytest.raises(IntegrityError):
        db.execute(statement.values(active_deliveries=load))  # refused at once, not at commit

    assert dealer_loads(engine) == {dealer: 0}
