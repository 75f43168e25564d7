"""Pure contracts shared by the API, the workflow and the activities: no I/O, no database or
web framework, as the workflow sandbox imports this package."""
