"""REST routes, one module per feature. Each module's ``routes(context)`` lists its endpoints; one line of
``butler.app.FEATURES`` registers it with its enable flags and the services it needs.

Handlers are thin: they take validated input, call the feature's service and shape the answer. Enable
flags and request schemas come from ``openapi.yaml``, not from these modules.
"""

from __future__ import annotations

from butler.services import Services

#: What route modules may use: the settings and the services of the enabled features.
RouteContext = Services
