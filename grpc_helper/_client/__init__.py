"""Private internals of ``RpcClient`` and ``AsyncRpcClient`` (not a public API).

- ``retry``: the retry flow of one call (deadline, retry budget, back-off, error translation), no I/O;
- ``core``: what both clients share: target, channel options, stubs and their metadata, service views.
"""
