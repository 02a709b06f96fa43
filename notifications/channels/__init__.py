"""Delivery channels: provider adapters behind one guarded send pipeline (`pipeline`), built from
configuration by `registry.build_channels`."""

from notifications.channels.config import ChannelConfigError
from notifications.channels.registry import build_channels

__all__ = ["ChannelConfigError", "build_channels"]
