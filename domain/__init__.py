"""Pure contracts shared by the API, the workflow and the activities.

Nothing here does I/O or imports a database or web framework: the workflow sandbox
imports this package, and so does every other process.
"""
