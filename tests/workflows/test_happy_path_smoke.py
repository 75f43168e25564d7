import asyncio

from domain.payloads import DeliveredReport, PaymentDecision
from domain.status import SagaPhase
from tests.saga_harness import add_dealer, dealer_load, db_statuses, saga_workers, start_saga
from workflows import OrderProcessWorkflow as W


async def test_confirmed_order_is_delivered(time_skipping_env, engine, executor, task_queue_suffix):
    client = time_skipping_env.client
    dealer = add_dealer(engine)
    async with saga_workers(client, engine, executor, task_queue_suffix):
        handle = await start_saga(client, task_queue_suffix)
        state = await handle.execute_update(W.wait_for_payment)
        await handle.signal(W.confirm_payment, PaymentDecision(payment_id=state.payment_id))
        for _ in range(200):
            s = await handle.query(W.state)
            if s.phase == SagaPhase.IN_TRANSIT:
                break
            await asyncio.sleep(0.05)
        assert dealer_load(engine, dealer) == 1
        await handle.signal(W.mark_delivered, DeliveredReport(delivery_id=s.delivery_id))
        result = await handle.result()
    print(result.model_dump_json(indent=1))
    assert result.phase == SagaPhase.DELIVERED
    assert db_statuses(engine, result.order_id)["order"] == "DELIVERED"
    assert dealer_load(engine, dealer) == 0
