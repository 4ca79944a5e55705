"""The channel server: broadcasts films cut into blocks to the clients of each channel (the stock protocol, docs/report/protocol.rst)."""
