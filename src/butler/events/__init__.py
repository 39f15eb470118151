"""Events from Sense: the UDP datagrams of Sense's log appenders, and what Butler makes of them.

``parsing`` turns datagrams into typed events; ``udp`` receives them (size, source, rate and format
checks, with counters); ``active_users`` keeps the sessions of the proxy events; ``task_outcomes``
enriches scheduler events from QRS once and hands them to every consumer; ``mqtt_out`` is one such
consumer. None of them knows of HTTP.
"""
