"""The three services' business operations, written once for both saga styles.

One module per service (``orders``, ``payments``, ``deliveries``). Each operation is a plain
function over a SQLModel session that **does not commit**: the caller owns the transaction
(a Temporal activity commits it alone; a choreography handler commits it together with the
event it emits and the event it consumed). Every state change is a guarded transition
(:func:`services.rows.transition`), so running an operation again is a no-op, and every row
records the saga that created it: an operation acts only on its own saga's rows.

Failures a retry cannot fix raise :class:`domain.errors.BusinessError`.
"""
