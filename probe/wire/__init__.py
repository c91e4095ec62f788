"""Sans-I/O wire codecs: bytes in, values out; no sockets, no clocks."""
