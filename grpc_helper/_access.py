"""``Access``: who may call a method, declared per service and enforced by the server before the manager runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from grpc_helper._identity import Identity
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException


class Access:
    """A rule on the caller's ``Identity``, checked by the server for every call of the methods it covers.

    Three rules are built in: ``Access.ANYONE`` (plaintext callers too), ``Access.AUTHENTICATED`` (a verified
    client certificate) and ``Access.ADMIN`` (a certificate whose name is in the server's ``admins``). Build
    others with ``Access.rule()``. Give them to ``RpcServiceDescriptor(access=...)``, for the whole service or
    per method name (``"*"`` for the methods not named)::

        RpcServiceDescriptor(..., access={"get": Access.AUTHENTICATED, "*": Access.ADMIN})

    A refused call fails with UNAUTHENTICATED when the rule needs an identity and the caller has none, and
    with PERMISSION_DENIED otherwise; the manager never sees it.
    """

    ANYONE: Access
    AUTHENTICATED: Access
    ADMIN: Access

    def __init__(self, predicate: Callable[[Identity | None], bool], description: str, *, needs_identity: bool) -> None:
        self._predicate = predicate
        self.description = description
        self.needs_identity = needs_identity

    @classmethod
    def rule(cls, predicate: Callable[[Identity], bool], description: str) -> Access:
        """A custom rule for authenticated callers: ``predicate(identity)`` says yes or no.

        ``description`` completes the refusal message "<method> is reserved to <description>"::

            Access.rule(lambda who: who.name.startswith("ops-"), "operators (ops-*)")
        """
        return cls(lambda who: who is not None and predicate(who), description, needs_identity=True)

    def allows(self, identity: Identity | None) -> bool:
        return self._predicate(identity)

    def refusal(self, method: str, identity: Identity | None) -> RpcException | None:
        """Why ``identity`` may not call ``method``, or None when it may."""
        if self._predicate(identity):
            return None
        if identity is None and self.needs_identity:
            return RpcException(
                f"{method} requires a client certificate (mutual TLS) signed by the server's CA",
                ResultCode.ERROR_UNAUTHENTICATED,
            )
        return RpcException(f"{method} is reserved to {self.description}; {identity} may not call it",
                            ResultCode.ERROR_PERMISSION_DENIED)

    def __repr__(self) -> str:
        return f"Access({self.description})"


Access.ANYONE = Access(lambda _who: True, "anyone", needs_identity=False)
Access.AUTHENTICATED = Access(lambda who: who is not None, "authenticated callers", needs_identity=True)
Access.ADMIN = Access(lambda who: who is not None and who.admin, "administrators", needs_identity=True)

AccessSpec = Access | Mapping[str, Access]


def access_by_method(spec: AccessSpec, methods: Mapping[str, str]) -> dict[str, Access]:
    """``{path: Access}`` for every method of a service, from a descriptor's ``access`` argument.

    :param methods: ``{short method name: full path}``. Raises ``ValueError`` for a name the service lacks.
    """
    if isinstance(spec, Access):
        return dict.fromkeys(methods.values(), spec)
    unknown = sorted(set(spec) - set(methods) - {"*"})
    if unknown:
        raise ValueError(f"access names methods the service does not have: {', '.join(unknown)}")
    default = spec.get("*", Access.ANYONE)
    for name, rule in spec.items():
        if not isinstance(rule, Access):
            raise TypeError(f"access[{name!r}] must be an Access, not {type(rule).__name__}")
    return {path: spec.get(name, default) for name, path in methods.items()}
