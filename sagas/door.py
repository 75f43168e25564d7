"""The door, for both saga styles: what the API, the CLI and the tools call.

A new order runs in ``SAGA_STYLE``; an existing one is steered in the style it was placed
with, and both are answered alike (shared rules: :mod:`sagas.rules`).
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from temporalio.client import Client

from choreography.outbox import Publisher
from domain import names
from domain.payloads import OrderRequest, SagaState, SagaTimeouts
from domain.status import Decision, SagaStyle
from domain.views import EventLogEntry, OrderView, ReplayFilter, StuckOrder
from sagas import rules, views
from sagas.choreography import ChoreographedSagas
from sagas.errors import ConflictError, NotFoundError
from sagas.orchestration import OrchestratedSagas
from sagas.rules import DecisionAccepted, NewOrder, Placement
from sagas.throttle import Throttle
from services.payments import DecisionTaken
from settings import Settings

# Temporal descriptions a listing of stuck orders asks for at once.
DESCRIBES_AT_ONCE = 16


def _anyone(_customer_id: str) -> None:
    """Lets anyone decide (the CLI and the tools act for the customer)."""


class Sagas:
    """Orders' sagas, whichever their style."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        client: Client | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        # Decisions on one payment, and reports on one delivery, a minute: a client looping on
        # them is refused (429) before it costs a write or a signal.
        self._decisions = Throttle(settings.decisions_per_minute)
        self._reports = Throttle(settings.decisions_per_minute)
        self._orchestrated = (
            OrchestratedSagas(client, engine, settings) if client is not None else None
        )
        self._choreographed = (
            ChoreographedSagas(engine, settings, publisher) if publisher is not None else None
        )

    async def aclose(self) -> None:
        """Finish what was left to do after answers given (before the engine closes)."""
        if self._orchestrated is not None:
            await self._orchestrated.aclose()

    def _orchestration(self) -> OrchestratedSagas:
        if self._orchestrated is None:
            raise ConflictError("this order's saga runs on Temporal, which this door lacks")
        return self._orchestrated

    def _choreography(self) -> ChoreographedSagas:
        if self._choreographed is None:
            raise ConflictError("this order's saga runs on events, and NATS_URL is not set")
        return self._choreographed

    async def place(
        self,
        request: OrderRequest,
        idempotency_key: str | None,
        *,
        wait: float = 0,
        timeouts: SagaTimeouts | None = None,
    ) -> Placement:
        """Place an order in ``SAGA_STYLE`` (a replayed Idempotency-Key: in the style its
        order was placed with). ``timeouts``: the saga's windows, the settings' by default.

        :class:`IdempotencyKeyReusedError` for a key used with another request."""
        order = NewOrder(
            order_id=names.new_order_id(
                self._settings.order_id_key, request.customer_id, idempotency_key
            ),
            request=request,
            idempotency_key=idempotency_key,
            fingerprint=request.fingerprint(),
            timeouts=timeouts or self._settings.saga_timeouts,
        )
        style = self._settings.saga_style
        if idempotency_key is not None and style == SagaStyle.CHOREOGRAPHY:
            # A replay keeps its order's style (the orchestrated adapter answers either).
            style = await self._style(order.order_id) or style
        if style == SagaStyle.CHOREOGRAPHY:
            return await self._choreography().place(order, wait=wait)
        return await self._orchestration().place(order, wait=wait)

    async def order(self, order_id: str) -> OrderView:
        """The order as the database holds it (CREATING while an orchestrated saga's first
        steps have not written it). :class:`NotFoundError` for an order never accepted."""
        view = await asyncio.to_thread(views.order_view, self._engine, self._settings, order_id)
        if view is None:
            raise NotFoundError(f"order {order_id} does not exist")
        return view

    async def saga_state(self, order_id: str) -> SagaState | list[EventLogEntry] | None:
        """The saga's full account: an orchestrated saga's state (a workflow query), or a
        choreographed order's event log. None when there is none."""
        if await self._style(order_id) == SagaStyle.CHOREOGRAPHY:
            return await asyncio.to_thread(views.event_log, self._engine, order_id)
        return await self._orchestration().saga_state(order_id)

    async def cancel(self, order_id: str) -> None:
        """Cancel before the pivot (it compensates). :class:`ConflictError` after it, or when
        the order is being cancelled already."""
        view = await self.order(order_id)
        rules.check_cancellable(view)
        if view.style == SagaStyle.CHOREOGRAPHY:
            await self._choreography().cancel(order_id)
        else:
            await self._orchestration().cancel(order_id)

    async def decide_payment(
        self,
        payment_id: str,
        decision: Decision,
        *,
        authorize: Callable[[str], None] = _anyone,
    ) -> DecisionAccepted:
        """The customer's decision (CONFIRM or CANCEL): of racing decisions exactly one wins.
        ``authorize`` gets the payment's customer first and raises to refuse.
        :class:`NotFoundError` for an unknown payment; :class:`TooManyRequestsError` beyond
        ``DECISIONS_PER_MINUTE`` on one payment."""
        if decision == Decision.TIMEOUT:
            raise ValueError("TIMEOUT is the window's own close, not a customer's decision")

        def look_then_take() -> tuple[views.PaymentParty | None, DecisionTaken | None]:
            # One thread hop for the look-up and the compare-and-set: the confirm's hot path.
            party = views.payment_party(self._engine, payment_id)
            if party is None:
                return None, None
            authorize(party.customer_id)
            self._decisions.take(payment_id, f"payment {payment_id}")
            if party.style == SagaStyle.CHOREOGRAPHY:
                return party, None
            return party, self._orchestration().take_decision(payment_id, decision)

        party, taken = await asyncio.to_thread(look_then_take)
        if party is None:
            raise NotFoundError(f"payment {payment_id} does not exist")
        if taken is None:
            return await self._choreography().decide_payment(
                payment_id, decision, order_id=party.order_id
            )
        return await self._orchestration().deliver_decision(payment_id, decision, taken)

    async def report_delivered(self, delivery_id: str) -> str:
        """The dealer's report that the parcel arrived; returns its order id. The same report
        again is answered alike and changes nothing. :class:`NotFoundError` for an unknown
        delivery; :class:`ConflictError` unless it is IN_TRANSIT (or DELIVERED);
        :class:`TooManyRequestsError` beyond ``DECISIONS_PER_MINUTE`` on one."""
        found = await asyncio.to_thread(views.delivery_and_style, self._engine, delivery_id)
        if found is None:
            raise NotFoundError(f"delivery {delivery_id} does not exist")
        self._reports.take(delivery_id, f"delivery {delivery_id}")
        delivery, style = found
        if rules.to_report(delivery_id, delivery.status):
            if style == SagaStyle.CHOREOGRAPHY:
                await self._choreography().report_delivered(delivery_id, order_id=delivery.order_id)
            else:
                await self._orchestration().report_delivered(delivery)
        return delivery.order_id

    async def replay_dead_letter(self, dead_letter_id: str) -> None:
        """Deliver a dead-lettered event again (its cause fixed)."""
        await self._choreography().replay_dead_letter(dead_letter_id)

    async def replay_dead_letters(self, chosen: ReplayFilter) -> int:
        """Deliver again every pending dead letter ``chosen`` matches (their cause fixed), each
        as :meth:`replay_dead_letter` does; returns how many were queued."""
        return await self._choreography().replay_dead_letters(chosen)

    async def stuck_orders(
        self, *, older_than: timedelta | None = None, limit: int = 100, offset: int = 0
    ) -> list[StuckOrder]:
        """Orders whose saga waits longer than expected, longest first, each with why
        (:func:`sagas.views.stuck_orders`; an orchestrated saga's why from Temporal too).
        ``older_than``: every unfinished order without progress for that long."""
        found = await asyncio.to_thread(
            views.stuck_orders,
            self._engine,
            self._settings,
            now=datetime.now(UTC),
            older_than=older_than,
            limit=limit,
            offset=offset,
        )
        orchestrated = self._orchestrated
        if orchestrated is not None:
            gate = asyncio.Semaphore(DESCRIBES_AT_ONCE)

            async def explain(entry: StuckOrder) -> None:
                async with gate:
                    await orchestrated.explain_stuck(entry)

            await asyncio.gather(*(explain(e) for e in found if e.style == SagaStyle.ORCHESTRATION))
        return found

    async def _style(self, order_id: str) -> SagaStyle | None:
        return await asyncio.to_thread(views.style_of, self._engine, order_id)
