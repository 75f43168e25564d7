"""DeliveryService activities against a real database (SQLite, or PostgreSQL via DATABASE_URL)."""

import uuid

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deliveries import DeliveryActivities
from domain import names
from domain.payloads import CreateDeliveryInput, DeliveryRef, DeliverySnapshot
from domain.status import DeliveryStatus
from store.models import DealerRow, DeliveryRow
from tests.activities.support import (
    all_rows,
    assert_business_error,
    dealer_loads,
    get_row,
    new_order_id,
    open_delivery,
    order_ref,
    place_order,
    run_concurrently,
)
from tests.saga_harness import add_dealer, db_statuses, dealer_load, set_dealer_load

pytestmark = pytest.mark.db


def order_of(engine, ref: DeliveryRef) -> str:
    return get_row(engine, DeliveryRow, ref.delivery_id).order_id


def in_transit(engine, deliveries, dealer_capacity: int = 3) -> tuple[DeliveryRef, int]:
    """An IN_TRANSIT delivery whose dealer also carries one other parcel (load 2).

    The second parcel shows a release is exactly one unit, not merely floored at zero.
    """
    dealer = add_dealer(engine, capacity=dealer_capacity)
    other, ref = open_delivery(engine), open_delivery(engine)
    assert deliveries.assign_dealer(other).dealer_id == dealer
    assert deliveries.assign_dealer(ref).dealer_id == dealer
    assert dealer_load(engine, dealer) == 2
    return ref, dealer


# --- create_delivery ----------------------------------------------------------------------


def test_create_delivery_twice_keeps_one_delivery(engine, deliveries):
    order_id = place_order(engine)
    params = CreateDeliveryInput(
        delivery_id=names.delivery_id_for(order_id),
        order_id=order_id,
        province="Tehran",
        city="Tehran",
    )
    retry = params.model_copy(update={"delivery_id": str(uuid.uuid4()), "city": "Karaj"})

    first = ActivityEnvironment().run(deliveries.create_delivery, params)
    second = ActivityEnvironment().run(deliveries.create_delivery, retry)

    assert first == second
    assert first == DeliverySnapshot(
        delivery_id=params.delivery_id,
        order_id=order_id,
        status=DeliveryStatus.PENDING,
        dealer_id=None,
    )
    rows = all_rows(engine, DeliveryRow)
    assert [(d.id, d.order_id, d.status, d.city, d.dealer_id) for d in rows] == [
        (params.delivery_id, order_id, "PENDING", "Tehran", None)
    ]


def test_concurrent_create_delivery_stores_one_delivery(engine, deliveries):
    order_id = place_order(engine)
    inputs = [
        CreateDeliveryInput(
            delivery_id=str(uuid.uuid4()), order_id=order_id, province="Tehran", city="Tehran"
        )
        for _ in range(16)
    ]

    results = run_concurrently(deliveries.create_delivery, inputs)

    rows = all_rows(engine, DeliveryRow)
    assert len(rows) == 1
    assert {r.delivery_id for r in results} == {rows[0].id}
    assert db_statuses(engine, order_id)["deliveries"] == 1


# --- assign_dealer ------------------------------------------------------------------------


def test_assign_dealer_twice_takes_one_unit_of_capacity(engine, deliveries):
    dealer = add_dealer(engine, capacity=2)
    ref = open_delivery(engine)

    first = ActivityEnvironment().run(deliveries.assign_dealer, ref)
    assigned = get_row(engine, DeliveryRow, ref.delivery_id)
    add_dealer(engine, capacity=2)  # an idle dealer appears: the replay must not move
    second = ActivityEnvironment().run(deliveries.assign_dealer, ref)

    assert first == second
    assert (first.status, first.dealer_id) == (DeliveryStatus.IN_TRANSIT, dealer)
    assert (assigned.status, assigned.dealer_id) == ("IN_TRANSIT", dealer)
    assert get_row(engine, DeliveryRow, ref.delivery_id) == assigned
    assert dealer_load(engine, dealer) == 1


def test_assign_unknown_delivery_is_entity_not_found(engine, deliveries):
    dealer = add_dealer(engine)

    with pytest.raises(ApplicationError) as excinfo:
        deliveries.assign_dealer(DeliveryRef(delivery_id=str(uuid.uuid4())))

    assert_business_error(excinfo.value, names.ENTITY_NOT_FOUND)
    assert dealer_load(engine, dealer) == 0


def test_assign_cancelled_delivery_is_invalid_transition(engine, deliveries):
    dealer = add_dealer(engine)
    ref = open_delivery(engine)
    deliveries.cancel_delivery(order_ref(order_of(engine, ref)))
    cancelled = get_row(engine, DeliveryRow, ref.delivery_id)

    with pytest.raises(ApplicationError) as excinfo:
        deliveries.assign_dealer(ref)

    assert_business_error(excinfo.value, names.INVALID_TRANSITION)
    assert get_row(engine, DeliveryRow, ref.delivery_id) == cancelled
    assert dealer_load(engine, dealer) == 0


def test_assign_delivered_delivery_is_invalid_transition(engine, deliveries):
    dealer = add_dealer(engine)
    ref = open_delivery(engine)
    deliveries.assign_dealer(ref)
    deliveries.complete_delivery(ref)
    delivered = get_row(engine, DeliveryRow, ref.delivery_id)

    with pytest.raises(ApplicationError) as excinfo:
        deliveries.assign_dealer(ref)

    assert_business_error(excinfo.value, names.INVALID_TRANSITION)
    assert get_row(engine, DeliveryRow, ref.delivery_id) == delivered
    assert dealer_load(engine, dealer) == 0


# --- dealer choice -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dealer_place", "delivery_place"),
    [
        (("Tehran", "Tehran"), ("  tEhRaN ", "TEHRAN")),
        (("Tehran", "Tehran"), ("tehran", "\ttehran  ")),
        (("Razavi Khorasan", "Mashhad"), (" razavi    KHORASAN ", "mashhad")),
        (("  Razavi  Khorasan ", " MASHHAD"), ("Razavi Khorasan", "Mashhad")),
        (("Bayern", "Straße"), ("BAYERN", "STRASSE")),  # Unicode case folding, not SQL lower
    ],
)
def test_assign_matches_place_ignoring_case_and_spaces(
    engine, deliveries, dealer_place, delivery_place
):
    dealer = add_dealer(engine, province=dealer_place[0], city=dealer_place[1])
    ref = open_delivery(engine, province=delivery_place[0], city=delivery_place[1])

    snapshot = deliveries.assign_dealer(ref)

    assert (snapshot.status, snapshot.dealer_id) == (DeliveryStatus.IN_TRANSIT, dealer)
    assert dealer_load(engine, dealer) == 1


def test_assign_only_considers_dealers_of_the_delivery_province_and_city(engine, deliveries):
    elsewhere = [
        add_dealer(engine, province="Tehran", city="Karaj", capacity=5),  # same province
        add_dealer(engine, province="Alborz", city="Tehran", capacity=5),  # same city name
        add_dealer(engine, province="Isfahan", city="Isfahan", capacity=5),
    ]
    ref = open_delivery(engine, province="Tehran", city="Tehran")

    nobody = deliveries.assign_dealer(ref)

    assert (nobody.status, nobody.dealer_id) == (DeliveryStatus.PENDING, None)
    assert set(dealer_loads(engine).values()) == {0}

    local = add_dealer(engine, province="Tehran", city="Tehran", capacity=1)
    assert deliveries.assign_dealer(ref).dealer_id == local
    assert dealer_loads(engine) == {local: 1} | dict.fromkeys(elsewhere, 0)


def test_assign_picks_the_least_loaded_dealer_then_the_lowest_id(engine, deliveries):
    first_dealer = add_dealer(engine, capacity=5)
    refs = [open_delivery(engine) for _ in range(4)]

    assert deliveries.assign_dealer(refs[0]).dealer_id == first_dealer  # the only one
    second_dealer = add_dealer(engine, capacity=5)
    assert second_dealer > first_dealer
    assert deliveries.assign_dealer(refs[1]).dealer_id == second_dealer  # 0 active beats 1
    assert deliveries.assign_dealer(refs[2]).dealer_id == first_dealer  # tie 1-1: lowest id
    assert deliveries.assign_dealer(refs[3]).dealer_id == second_dealer  # 1 active beats 2

    assert dealer_loads(engine) == {first_dealer: 2, second_dealer: 2}
    by_dealer = {d.id: d.dealer_id for d in all_rows(engine, DeliveryRow)}
    assert by_dealer == {
        refs[0].delivery_id: first_dealer,
        refs[1].delivery_id: second_dealer,
        refs[2].delivery_id: first_dealer,
        refs[3].delivery_id: second_dealer,
    }


def test_assign_skips_a_full_dealer_even_when_it_is_least_loaded(engine, deliveries):
    full = add_dealer(engine, capacity=1)
    set_dealer_load(engine, full, 1)
    busy = add_dealer(engine, capacity=5)
    set_dealer_load(engine, busy, 3)
    ref = open_delivery(engine)

    snapshot = deliveries.assign_dealer(ref)

    assert snapshot.dealer_id == busy
    assert dealer_loads(engine) == {full: 1, busy: 4}


def test_assign_with_no_free_dealer_leaves_the_delivery_pending(engine, deliveries):
    full = add_dealer(engine, capacity=1)
    set_dealer_load(engine, full, 1)
    zero = add_dealer(engine, capacity=0)
    add_dealer(engine, city="Karaj", capacity=5)  # free, but elsewhere
    ref = open_delivery(engine)
    pending = get_row(engine, DeliveryRow, ref.delivery_id)
    loads = dealer_loads(engine)

    snapshot = deliveries.assign_dealer(ref)

    assert snapshot == DeliverySnapshot(
        delivery_id=ref.delivery_id,
        order_id=pending.order_id,
        status=DeliveryStatus.PENDING,
        dealer_id=None,
    )
    assert get_row(engine, DeliveryRow, ref.delivery_id) == pending  # updated_at untouched
    assert dealer_loads(engine) == loads
    assert loads[full] == 1
    assert loads[zero] == 0


# --- complete_delivery ---------------------------------------------------------------------


def test_complete_delivery_twice_releases_capacity_once(engine, deliveries):
    ref, dealer = in_transit(engine, deliveries)

    first = deliveries.complete_delivery(ref)
    delivered = get_row(engine, DeliveryRow, ref.delivery_id)
    second = deliveries.complete_delivery(ref)

    assert first == second
    assert (first.status, first.dealer_id) == (DeliveryStatus.DELIVERED, dealer)
    assert delivered.status == "DELIVERED"
    assert get_row(engine, DeliveryRow, ref.delivery_id) == delivered
    assert dealer_load(engine, dealer) == 1  # the other parcel is still on the road


def test_complete_delivery_never_releases_below_zero(engine, deliveries):
    dealer = add_dealer(engine, capacity=1)
    ref = open_delivery(engine)
    deliveries.assign_dealer(ref)
    set_dealer_load(engine, dealer, 0)  # a count already given back by hand

    assert deliveries.complete_delivery(ref).status == DeliveryStatus.DELIVERED
    assert deliveries.complete_delivery(ref).status == DeliveryStatus.DELIVERED
    assert dealer_load(engine, dealer) == 0


def test_concurrent_complete_delivery_releases_capacity_once(engine, deliveries):
    ref, dealer = in_transit(engine, deliveries)

    results = run_concurrently(deliveries.complete_delivery, [ref] * 16)

    assert {(r.status, r.dealer_id) for r in results} == {(DeliveryStatus.DELIVERED, dealer)}
    assert dealer_load(engine, dealer) == 1


def test_complete_unknown_delivery_is_entity_not_found(engine, deliveries):
    with pytest.raises(ApplicationError) as excinfo:
        deliveries.complete_delivery(DeliveryRef(delivery_id=str(uuid.uuid4())))

    assert_business_error(excinfo.value, names.ENTITY_NOT_FOUND)


@pytest.mark.parametrize("cancelled", [False, True], ids=["pending", "cancelled"])
def test_complete_delivery_not_in_transit_is_invalid_transition(engine, deliveries, cancelled):
    dealer = add_dealer(engine)
    ref = open_delivery(engine)
    if cancelled:
        deliveries.assign_dealer(ref)
        deliveries.cancel_delivery(order_ref(order_of(engine, ref)))
    before = get_row(engine, DeliveryRow, ref.delivery_id)

    with pytest.raises(ApplicationError) as excinfo:
        deliveries.complete_delivery(ref)

    assert_business_error(excinfo.value, names.INVALID_TRANSITION)
    assert get_row(engine, DeliveryRow, ref.delivery_id) == before
    assert dealer_load(engine, dealer) == 0


# --- cancel_delivery -------------------------------------------------------------------------


def test_cancel_pending_delivery_twice_cancels_once(engine, deliveries):
    dealer = add_dealer(engine)
    ref = open_delivery(engine)
    order_id = order_of(engine, ref)

    first = deliveries.cancel_delivery(order_ref(order_id))
    cancelled = get_row(engine, DeliveryRow, ref.delivery_id)
    second = deliveries.cancel_delivery(order_ref(order_id))

    assert (first.action, first.status) == ("cancelled", "CANCELLED")
    assert second.status == "CANCELLED"
    assert second.action != "cancelled"
    assert (cancelled.status, cancelled.dealer_id) == ("CANCELLED", None)
    assert get_row(engine, DeliveryRow, ref.delivery_id) == cancelled
    assert dealer_load(engine, dealer) == 0


def test_cancel_in_transit_delivery_twice_releases_its_dealer_once(engine, deliveries):
    ref, dealer = in_transit(engine, deliveries)
    order_id = order_of(engine, ref)

    first = deliveries.cancel_delivery(order_ref(order_id))
    cancelled = get_row(engine, DeliveryRow, ref.delivery_id)
    second = deliveries.cancel_delivery(order_ref(order_id))

    assert (first.action, first.status) == (f"cancelled, released dealer {dealer}", "CANCELLED")
    assert second.status == "CANCELLED"
    assert "released" not in second.action
    assert cancelled.status == "CANCELLED"
    assert get_row(engine, DeliveryRow, ref.delivery_id) == cancelled
    assert dealer_load(engine, dealer) == 1  # the other parcel still holds its unit


def test_concurrent_cancel_of_in_transit_delivery_releases_once(engine, deliveries):
    ref, dealer = in_transit(engine, deliveries)

    outcomes = run_concurrently(deliveries.cancel_delivery, [order_ref(order_of(engine, ref))] * 16)

    assert sum("released" in o.action for o in outcomes) == 1
    assert {o.status for o in outcomes} == {"CANCELLED"}
    assert dealer_load(engine, dealer) == 1


def test_cancel_delivered_delivery_leaves_it_alone(engine, deliveries):
    ref, dealer = in_transit(engine, deliveries)
    deliveries.complete_delivery(ref)
    delivered = get_row(engine, DeliveryRow, ref.delivery_id)

    outcome = deliveries.cancel_delivery(order_ref(delivered.order_id))

    assert outcome.status == "DELIVERED"
    assert "cancelled" not in outcome.action
    assert get_row(engine, DeliveryRow, ref.delivery_id) == delivered
    assert dealer_load(engine, dealer) == 1


def test_cancel_delivery_with_no_delivery_has_nothing_to_undo(engine, deliveries):
    ref, dealer = in_transit(engine, deliveries)
    order_without_delivery = place_order(engine)
    before = all_rows(engine, DeliveryRow)

    for order_id in (new_order_id(), order_without_delivery):
        outcome = deliveries.cancel_delivery(order_ref(order_id))
        assert (outcome.action, outcome.status) == ("nothing to undo", None)

    assert sorted(all_rows(engine, DeliveryRow), key=lambda d: d.id) == sorted(
        before, key=lambda d: d.id
    )
    assert dealer_load(engine, dealer) == 2
    assert get_row(engine, DeliveryRow, ref.delivery_id).status == "IN_TRANSIT"


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_assignment_never_overbooks(engine, deliveries):
    big = add_dealer(engine, capacity=5)
    small = add_dealer(engine, capacity=3)
    elsewhere = add_dealer(engine, city="Karaj", capacity=50)
    refs = [open_delivery(engine) for _ in range(30)]

    results = run_concurrently(deliveries.assign_dealer, refs)

    assigned = [r for r in results if r.dealer_id is not None]
    assert len(assigned) == 8
    assert all(r.status == DeliveryStatus.IN_TRANSIT for r in assigned)
    assert all(r.status == DeliveryStatus.PENDING for r in results if r.dealer_id is None)
    rows = {d.id: d for d in all_rows(engine, DeliveryRow)}
    for result in results:  # what each caller was told is what the database holds
        row = rows[result.delivery_id]
        assert (row.status, row.dealer_id) == (result.status, result.dealer_id)
    statuses = [(d.status, d.dealer_id is None) for d in rows.values()]
    assert statuses.count(("IN_TRANSIT", False)) == 8
    assert statuses.count(("PENDING", True)) == 22
    dealers = {d.id: d for d in all_rows(engine, DealerRow)}
    for dealer_id in (big, small):
        carried = sum(d.dealer_id == dealer_id and d.status == "IN_TRANSIT" for d in rows.values())
        dealer = dealers[dealer_id]
        assert dealer.active_deliveries == carried == dealer.capacity
    assert dealers[elsewhere].active_deliveries == 0


def test_concurrent_assignment_of_one_delivery_takes_one_unit(engine, deliveries):
    add_dealer(engine, capacity=5)
    add_dealer(engine, capacity=5)
    ref = open_delivery(engine)

    results = run_concurrently(deliveries.assign_dealer, [ref] * 16)

    assert len({(r.status, r.dealer_id) for r in results}) == 1
    winner = results[0].dealer_id
    assert winner is not None
    assert sorted(dealer_loads(engine).values()) == [0, 1]
    assert dealer_load(engine, winner) == 1
    assert get_row(engine, DeliveryRow, ref.delivery_id).dealer_id == winner


def test_assignment_racing_cancellation_always_ends_cancelled_and_released(
    engine, deliveries: DeliveryActivities
):
    """The saga is cancelled while its assignment runs: the compensation must win either way."""
    dealer = add_dealer(engine, capacity=50)
    refs = [open_delivery(engine) for _ in range(48)]
    order_ids = {ref.delivery_id: order_of(engine, ref) for ref in refs}

    def assign(ref: DeliveryRef) -> str:
        try:
            return deliveries.assign_dealer(ref).status
        except ApplicationError as error:  # the cancellation got there first
            assert_business_error(error, names.INVALID_TRANSITION)
            return "rejected"

    def race(task: tuple[str, DeliveryRef]) -> str:
        kind, ref = task
        if kind == "assign":
            return assign(ref)
        return deliveries.cancel_delivery(order_ref(order_ids[ref.delivery_id])).action

    run_concurrently(race, [(kind, ref) for ref in refs for kind in ("assign", "cancel")])

    statuses = {d.id: d.status for d in all_rows(engine, DeliveryRow)}
    assert statuses == dict.fromkeys(order_ids, "CANCELLED")
    assert dealer_load(engine, dealer) == 0
