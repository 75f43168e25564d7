"""The saga's door: how the API, the CLI and the tools start and steer order sagas.

Starting a saga, sending the customer's decision and the dealer's report, cancelling, reading
a saga's state and the orders' views, and connecting to Temporal all go through here, so no
caller knows how the saga runs. Failures a caller must answer are the domain errors of
:mod:`sagas.errors`; infrastructure failures (Temporal's ``RPCError``, SQLAlchemy's errors)
pass through for the caller to report as unavailability. Nothing here knows HTTP.
"""
