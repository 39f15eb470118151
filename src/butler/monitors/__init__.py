"""Butler's periodic monitors: Sense services, version and licences, licence release, heartbeat, uptime.

Each monitor runs on a later.js frequency (``later.py``) through one runner (``runner.py``); ``setup.py``
builds the enabled ones from the settings into a ``Monitors`` that starts, stops and reports them.
"""
