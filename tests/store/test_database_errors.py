"""A failure of the database is an outage (503) only when it is one: a value the database
refuses is the request's fault (422), a constraint another request won is a conflict (409).
Each against the real database, through the API's own error handlers."""

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from api.errors import install_error_handlers
from store.db import session
from store.models import DealerRow
from tests.saga_harness import add_dealer

pytestmark = pytest.mark.db


def app_running(engine: Engine, statement: str) -> FastAPI:
    """An app with the API's error handlers and one route that runs ``statement``."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/run")
    def run() -> None:
        with session(engine) as db:
            db.execute(text(statement))
            db.commit()

    return app


async def answer(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.post("/run")


async def test_a_value_the_database_refuses_is_a_422_not_an_outage(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite stores any value in any column: it refuses none")
    # What "ß" * 100 as a dealer's city did: a key of 200 characters in VARCHAR(100).
    key = "ss" * 100
    response = await answer(
        app_running(
            engine,
            "INSERT INTO dealers (name, phone, province, city, province_key, city_key, capacity,"
            f" active_deliveries, created_at) VALUES ('n', '+1 {uuid.uuid4().int % 10**9}',"
            f" 'T', 'T', 't', '{key}', 1, 0, now())",
        )
    )
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": "a value of this request cannot be stored"}
    assert "Retry-After" not in response.headers


async def test_a_constraint_another_request_won_is_a_409_not_an_outage(engine: Engine) -> None:
    dealer_id = add_dealer(engine)
    with session(engine) as db:
        dealer = db.get(DealerRow, dealer_id)
        assert dealer is not None
        phone = dealer.phone
    response = await answer(
        app_running(
            engine,
            "INSERT INTO dealers (name, phone, province, city, province_key, city_key, capacity,"
            f" active_deliveries, created_at) VALUES ('n', '{phone}', 'T', 'T', 't', 't', 1, 0,"
            " CURRENT_TIMESTAMP)",
        )
    )
    assert response.status_code == 409, response.text
    assert "Retry-After" not in response.headers


async def test_a_lost_database_is_a_503_with_retry_after(engine: Engine) -> None:
    response = await answer(app_running(engine, "SELECT * FROM no_such_table_at_all"))
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
