"""Private helpers shared by every grpc-helper command line (not a public API: use the console scripts).

- ``exits``: the exit-code table and the runner that turns exceptions into one ``error:`` line and a code,
- ``endpoint``: ``HOST:PORT`` parsing (IPv6 literals in brackets),
- ``tls``: the TLS options (``--tls-dir``, ``--name``, ``--cert``, ``--key``, ``--ca``, ``--insecure``),
- ``parser``: argument parsers with ``--version``,
- ``commands``: the ``grpc-helper`` console script (``info``, ``serve``, ``jobs``, ``grid``, ``certs``).
"""
