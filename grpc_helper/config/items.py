"""Configuration items declared in code: ``ConfigItem`` (name, description, default, ``Kind``) and holders."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Generic, TypeVar, overload

T = TypeVar("T")

NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
MAX_VALUE = 4096


class Kind(Generic[T]):
    """How an item's text value is checked and converted: ``parse(text)`` returns the value or raises
    ``ValueError`` saying why the text is refused.

    Built-in kinds: ``Kind.STRING``, ``Kind.INT``, ``Kind.POSITIVE_INT``, ``Kind.FLOAT`` (finite),
    ``Kind.POSITIVE_FLOAT``, ``Kind.SECONDS`` (a duration: 0 or more), ``Kind.BOOL``,
    ``Kind.enum("fast", "safe")``; a custom one: ``Kind("port", parse_port)``.
    """

    STRING: ClassVar[Kind[str]]
    INT: ClassVar[Kind[int]]
    POSITIVE_INT: ClassVar[Kind[int]]
    FLOAT: ClassVar[Kind[float]]
    POSITIVE_FLOAT: ClassVar[Kind[float]]
    SECONDS: ClassVar[Kind[float]]
    BOOL: ClassVar[Kind[bool]]

    def __init__(self, name: str, parse: Callable[[str], T], choices: tuple[str, ...] = ()) -> None:
        self.name = name
        self.parse = parse
        self.choices = choices

    def __repr__(self) -> str:
        return f"Kind({self.name!r})"

    @staticmethod
    def enum(*choices: str) -> Kind[str]:
        """One of ``choices`` (case-sensitive)."""
        if not choices:
            raise ValueError("an enum kind needs at least one choice")

        def parse(text: str) -> str:
            if text not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}")
            return text

        return Kind("enum", parse, tuple(choices))


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise ValueError("expected an integer above 0")
    return value


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise ValueError("expected a number above 0")
    return value


def _seconds(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise ValueError("expected a number of seconds (0 or more)")
    return value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true/false (or yes/no, on/off, 1/0)")


def _str(text: str) -> str:
    return text


Kind.STRING = Kind("string", _str)
Kind.INT = Kind("int", _int)
Kind.POSITIVE_INT = Kind("positive int", _positive_int)
Kind.FLOAT = Kind("float", _float)
Kind.POSITIVE_FLOAT = Kind("positive float", _positive_float)
Kind.SECONDS = Kind("seconds", _seconds)
Kind.BOOL = Kind("bool", _bool)


class ConfigItem(Generic[T]):
    """A configuration item, declared in code (usually as an attribute of a holder class)::

        class MyConfig:
            COLOR = ConfigItem("color", "color of the widgets", "blue", Kind.enum("blue", "red"), user=True)
            WORKERS = ConfigItem("my-workers", "worker threads", "4", Kind.POSITIVE_INT)

    Read its value in a ``Config``: ``config[MyConfig.COLOR]``.

    :param name: ``[a-z][a-z0-9-]*``; also names the environment variable (``MY_WORKERS``) and the key of
        ``config.json`` files and of ``-c my-workers=8``.
    :param description: what the item is for (shown by the config service).
    :param default: the code default, as text (it goes through ``kind`` like any other value).
    :param kind: how values are checked and converted (``Kind.STRING`` by default).
    :param can_be_empty: whether the empty text is accepted (as is, without ``kind``); refused by default.
    :param user: True for an item that can be changed remotely (persisted in the workspace); False for a
        static one, fixed at start.
    """

    @overload
    def __init__(
        self: ConfigItem[str], name: str, description: str, default: str, kind: None = None, *, can_be_empty: bool = False,
        user: bool = False,
    ) -> None: ...

    @overload
    def __init__(
        self, name: str, description: str, default: str, kind: Kind[T] | Callable[[str], T], *, can_be_empty: bool = False,
        user: bool = False,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        description: str,
        default: str,
        kind: Kind[T] | Callable[[str], T] | None = None,
        *,
        can_be_empty: bool = False,
        user: bool = False,
    ) -> None:
        if not NAME_RE.match(name):
            raise ValueError(f"invalid config item name {name!r}: expected [a-z][a-z0-9-]*")
        self.name = name
        self.description = description
        self.default = default
        if kind is None:
            kind = Kind.STRING  # type: ignore[assignment]
        self.kind: Kind[T] = kind if isinstance(kind, Kind) else Kind(getattr(kind, "__name__", "custom"), kind)  # type: ignore[arg-type]
        self.can_be_empty = can_be_empty
        self.user = user

    @property
    def env_name(self) -> str:
        """The environment variable giving this item's default (``my-item`` -> ``MY_ITEM``)."""
        return self.name.upper().replace("-", "_")

    def parse(self, text: str) -> T:
        """The value for ``text``, or ``ValueError("<name>: <reason>")``."""
        if not isinstance(text, str):
            raise ValueError(f"{self.name}: expected a text value, not {type(text).__name__}")
        if len(text) > MAX_VALUE:
            raise ValueError(f"{self.name}: value too long ({len(text)} characters, at most {MAX_VALUE})")
        if text == "" and not self.can_be_empty:
            raise ValueError(f"{self.name}: an empty value is not allowed")
        if text == "":
            return text  # type: ignore[return-value]
        try:
            return self.kind.parse(text)
        except Exception as exc:  # a custom kind may raise anything: it is a refusal, with its reason
            reason = str(exc)[:200] or type(exc).__name__
            raise ValueError(f"{self.name}: invalid value {text[:64]!r}: {reason}") from None

    def __repr__(self) -> str:
        return f"ConfigItem({self.name!r}, {self.kind.name}{', user' if self.user else ''})"


def items_of(holders: Iterable[Any]) -> Iterator[ConfigItem[Any]]:
    """The ``ConfigItem`` attributes of holder classes (or instances), and items given directly."""
    for holder in holders:
        if isinstance(holder, ConfigItem):
            yield holder
            continue
        for klass in reversed(type.mro(holder) if isinstance(holder, type) else type(holder).mro()):
            for value in vars(klass).values():
                if isinstance(value, ConfigItem):
                    yield value
