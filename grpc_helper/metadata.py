"""Metadata keys grpc-helper clients attach to every call."""

#: The client's API version for the called service (absent from foreign clients such as grpcurl).
API_VERSION_KEY = "api-version"
#: The client's name, shown in the server's USR2 dump of pending calls.
CLIENT_NAME_KEY = "client-name"


def client_metadata(api_version: int, client_name: str) -> tuple[tuple[str, str], ...]:
    """Metadata sent with each call of a client stub."""
    return ((API_VERSION_KEY, str(api_version)), (CLIENT_NAME_KEY, client_name))
