"""Fixtures of the activity tests: each service's activities over the test's database."""

import pytest
from sqlalchemy import Engine

from activities.deliveries import DeliveryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities


@pytest.fixture
def orders(engine: Engine) -> OrderActivities:
    return OrderActivities(engine)


@pytest.fixture
def payments(engine: Engine) -> PaymentActivities:
    return PaymentActivities(engine)


@pytest.fixture
def deliveries(engine: Engine) -> DeliveryActivities:
    return DeliveryActivities(engine)
