"""Servers that misbehave on purpose, on real sockets: for the tests, `probe mock` and `probe demo`."""
