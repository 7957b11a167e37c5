"""The events service: numbered events published by managers, listened to with filters, resumed after
interruptions from a retained window. See doc/events.md.
"""

from grpc_helper.events.listener import AsyncEventListener, EventListener
from grpc_helper.events.log import Events
from grpc_helper.events.manager import AsyncEventsManager, EventsManager

__all__ = ["AsyncEventListener", "AsyncEventsManager", "EventListener", "Events", "EventsManager"]
