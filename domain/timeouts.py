"""Time limits the workflow and the activities must agree on."""

from datetime import timedelta

# How long Temporal waits for one attempt of a saga step or compensation before it gives up
# on it (and retries, or, when the saga was cancelled meanwhile, compensates).
STEP_START_TO_CLOSE = timedelta(seconds=30)

# The most an attempt's database transaction may take: statements and lock waits are cut
# off by the database, and a commit past it is refused (store.db.session's ``budget``). Far
# shorter than STEP_START_TO_CLOSE, so an attempt Temporal has given up on can never commit
# after the compensation that followed it (a "zombie" write).
STEP_TRANSACTION_BUDGET = STEP_START_TO_CLOSE / 3
