"""Type stubs for a connection's write path (fastws/_output.pyx): a C-level base of Connection."""

from fastws._endpoint import ConnectionBase

class Output(ConnectionBase):
    """The write path of a connection (use fastws.Connection)."""
    transport: object
