"""The three services' business operations, written once for both saga styles.

Each operation is a function over a session that **does not commit**: the caller owns the
transaction. State changes are guarded transitions, so running one again is a no-op, and an
operation acts only on its own saga's rows. Failures a retry cannot fix raise
:class:`domain.errors.BusinessError`.
"""
