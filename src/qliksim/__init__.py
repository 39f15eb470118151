"""qliksim: a Qlik Sense Enterprise on Windows site on the surfaces a companion service uses.

QRS over mutual TLS with the xrfkey rules, the Engine's JSON-RPC over WebSocket, task execution with
execution results and script logs, and the scheduler and proxy log-appender datagrams over UDP. It is
built from the public descriptions of those protocols and shares no code with any client of them.
"""

__version__ = "0.1.0"
