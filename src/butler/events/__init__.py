"""Events from Sense: the UDP datagrams of Sense's log appenders, and what Butler makes of them.

``parsing`` turns datagrams into typed events; ``udp`` receives them (size, source, rate and format
checks, with counters); ``active_users`` keeps the sessions of the proxy events; ``task_outcomes``
enriches scheduler events from QRS once; ``bus`` takes what they publish and delivers it to each consumer
through its own queue and worker; ``mqtt_out`` is one such consumer. None of them knows of HTTP.
"""
