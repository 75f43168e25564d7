"""The choreographed saga: the three services react to each other's events (NATS JetStream,
through FastStream). No coordinator; what Temporal gives the orchestrated saga is built here:

- ``outbox``: a service writes its change and the event it emits in one transaction; the
  event is published with ``Nats-Msg-Id`` = its id right after the commit, and a relay
  publishes whatever a crash left behind (a duplicate at worst, which the broker's
  deduplication window and every inbox absorb).
- ``consumer``: each (service, event type) is one durable consumer; an event is applied in
  one transaction with its inbox row (so a redelivery has no second effect) and acknowledged
  after the commit; a failure is retried with backoff, then dead-lettered for an operator.
- ``handlers``: what each service does with each event, through ``services/`` (the same
  business operations as the orchestrated saga's activities).
- ``sweepers``: the payment window and the dealer window are deadlines in the owning
  service's own rows, fired by that service's sweeper.
- ``runtime``: the broker, the stream and the consumers, wired for one process.
"""
