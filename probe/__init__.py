"""probe: which messaging platforms work from this network, and how they are blocked."""

__version__ = "0.1.0"
