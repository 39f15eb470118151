"""Butler for Python: a companion service for Qlik Sense Enterprise on Windows."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("butler-qlik")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
