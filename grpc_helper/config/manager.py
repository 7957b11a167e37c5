"""``ConfigManager``: the config service, serving a ``Config`` (the same manager on both stacks)."""

from __future__ import annotations

from typing import Any

from grpc_helper.api import config_pb2, config_pb2_grpc
from grpc_helper.config.store import Config
from grpc_helper.manager import RpcManager


class ConfigManager(config_pb2_grpc.ConfigServiceServicer, RpcManager):
    """Remote get/set/reset of a ``Config``'s items (its methods never block: it serves asyncio servers too)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def _describe(self, item: Any) -> config_pb2.ConfigItem:
        config = self.config
        return config_pb2.ConfigItem(
            name=item.name,
            description=item.description,
            value=config.text(item.name),
            default_value=config.default(item.name),
            origin=config.origin(item.name),
            kind=item.kind.name,
            choices=item.kind.choices,
            user=item.user,
            can_be_empty=item.can_be_empty,
        )

    def get(self, request: config_pb2.ConfigFilter, context: Any = None) -> config_pb2.ConfigItems:
        items = [self.config.item(n) for n in request.names] if request.names else self.config.items()
        return config_pb2.ConfigItems(items=[self._describe(i) for i in items])

    def set(self, request: config_pb2.ConfigValues, context: Any = None) -> config_pb2.ConfigItems:
        changed = self.config.set({v.name: v.value for v in request.items})
        return config_pb2.ConfigItems(items=[self._describe(i) for i in changed])

    def reset(self, request: config_pb2.ConfigFilter, context: Any = None) -> config_pb2.ConfigItems:
        changed = self.config.reset(request.names)
        return config_pb2.ConfigItems(items=[self._describe(i) for i in changed])
