"""Points to InfluxDB: line protocol, the clients of InfluxDB 1.x, 2.x and 3.x, the buffered writer."""

from butler.influx.client import InfluxClient, InfluxError, open_client
from butler.influx.writer import InfluxWriter

__all__ = ["InfluxClient", "InfluxError", "InfluxWriter", "open_client"]
