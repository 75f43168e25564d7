"""Activities of the three services, one module each, all idempotent: methods of a class
built with the engine, so nothing connects at import time."""
