"""The config service: typed items declared in code, layered defaults, remote changes of *user* items.

See doc/config.md.
"""

from grpc_helper.config.items import ConfigItem, Kind
from grpc_helper.config.manager import ConfigManager
from grpc_helper.config.store import Config, ConfigError, CoreConfig, Folders

__all__ = ["Config", "ConfigError", "ConfigItem", "ConfigManager", "CoreConfig", "Folders", "Kind"]
