"""REST routes, one module per feature. Each module's ``routes(services)`` lists its endpoints; one line of
``butler.app.FEATURES`` registers it with its enable flags and the services it needs.

Handlers are thin: they take validated input, call the feature's service and shape the answer. Enable
flags and request schemas come from ``openapi.yaml``, not from these modules.

A route module is given the ``Services`` of ``butler.services``: the settings and the services of the
enabled features, one set shared by every listener.
"""
