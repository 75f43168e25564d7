"""The chaos run (``make chaos``): the real stack under crashes, restarts and outages.

Not part of the unit suite. It drives sagas through the HTTP API while it SIGKILLs the
worker (at random and at named fault points), restarts the Temporal dev server on its data
file and takes the database away, then checks in SQL and in Temporal that nothing was lost
or applied twice.
"""
