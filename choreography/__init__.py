"""The choreographed saga: the three services react to each other's events (NATS JetStream,
through FastStream), with no coordinator. What Temporal gives the orchestrated saga is built
here: ``outbox`` (events written with their change, then published), ``consumer`` (each event
applied once, with its inbox row), ``handlers`` (what each service does with each event),
``sweepers`` (the windows as deadlines in rows) and ``runtime`` (one process's wiring).
"""
