"""The benchmark (``make bench``, ``make bench-scale``): the saga on a real stack, measured.

``python -m tools.bench`` runs the saga against a baseline workflow with the same Temporal
round trips and no database work, then the two saga styles through their APIs;
``python -m tools.bench scale`` holds thousands of sagas open. See ``__main__.py``.
"""
