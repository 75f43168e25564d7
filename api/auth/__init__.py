"""Who may do what. Every caller is someone: auth is on unless ``AUTH_MODE=dev``.

Two kinds of credential (``settings.py``):

- **Customer**: ``Authorization: Bearer <JWT>`` (HS256, ``sub`` = the customer id, ``aud``
  ``order-saga``, ``exp`` required), signed with the first of ``CUSTOMER_TOKEN_SECRETS`` and
  verified by any of them (to rotate). It acts only for that customer: their orders and
  payments.
- **Operator**: ``X-API-Key``, one of ``OPERATOR_API_KEYS``: dealers, delivery reports,
  cancelling any order, every order and saga state; never placing orders or deciding payments.

No valid credential: **401**, before anything is looked up. The wrong kind, or acting in
another customer's name: **403**. Another customer's order or payment: **404**, as an unknown
id, so its existence is not told. Secrets are compared in constant time and never logged.
"""
