"""The benchmark (``make bench``, ``make bench-scale``): the saga on a real stack, measured.

``python -m tools.bench`` runs the saga's delivered path against a baseline workflow with the same
Temporal round trips and no database work, then the HTTP API at a fixed request rate;
``python -m tools.bench scale`` holds thousands of sagas open and measures memory and confirm
latency. See ``tools/bench/__main__.py``.
"""
