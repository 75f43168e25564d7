"""Who may do what. Every caller is someone: auth is on unless ``AUTH_MODE=dev``.

Two kinds of credential (``settings.py``):

- **Customer**: ``Authorization: Bearer <JWT>`` (HS256, ``sub`` = the customer id, ``aud``
  ``order-saga``, ``exp`` required), signed with the first of ``CUSTOMER_TOKEN_SECRETS`` and
  accepted when any of them verifies it, so a secret rotates by putting the new one first and
  dropping the old one once its tokens have expired (``python -m api.auth token <customer_id>``
  issues one). A customer credential is bound to that one customer: it places orders in their
  name, reads, confirms and cancels only their own orders and payments, and lists only theirs.
- **Operator**: ``X-API-Key: <key>``, one of ``OPERATOR_API_KEYS`` (several at once to
  rotate). Operators add and list dealers, report deliveries, cancel any order on behalf of
  the shop, list every order and read the saga's full state. They do not place orders or
  decide payments: those are the customer's.

Answers: no credential, or one that is malformed, expired or signed with an unknown secret,
**401** (with ``WWW-Authenticate``), before anything is looked up. A valid credential of the
wrong kind, or a customer's acting in another customer's name (placing an order, listing
orders), **403**. Another customer's order or payment is **404**, word for word what an
unknown id answers: a 403 there would tell a customer whether another's order exists (an
Idempotency-Key's order id is derived from the key). ``AUTH_MODE=dev``: no credential is
asked for and every caller may do everything; ``make run`` says so when it starts. Every
comparison of a secret is constant-time; no key, token or secret is ever logged or shown in a
repr.
"""
