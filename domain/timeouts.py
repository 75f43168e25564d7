"""Time limits the workflow and the activities must agree on."""

from datetime import timedelta

# How long Temporal waits for one attempt of a saga step or compensation.
STEP_START_TO_CLOSE = timedelta(seconds=30)

# The most an attempt's transaction may take (store.db.session's ``budget``): far shorter
# than STEP_START_TO_CLOSE, so an abandoned attempt never commits after its compensation.
STEP_TRANSACTION_BUDGET = STEP_START_TO_CLOSE / 3
