"""The saga's door: how the API, the CLI and the tools start and steer order sagas.

No caller knows how a saga runs. Failures a caller must answer are :mod:`sagas.errors`;
infrastructure failures pass through, to be reported as unavailability. Nothing here knows HTTP.
"""
