"""Activities of the three services, one module each. All are idempotent.

Each service's activities are methods of a class built with the database engine, so the
worker wires the engine once and nothing connects at import time.
"""
