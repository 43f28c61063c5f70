"""Timers whose interval operators can set."""
from __future__ import annotations

from nameko.timer import Timer


class ConfiguredTimer(Timer):
    """nameko's ``timer`` whose interval comes from configuration:
    ``config_key`` names a number of seconds; ``interval`` is the default."""

    def __init__(self, config_key: str, interval: float, **kwargs):
        self.config_key = config_key
        super().__init__(interval, **kwargs)

    def setup(self) -> None:
        value = self.container.config
        for part in self.config_key.split("."):
            value = (value or {}).get(part) if isinstance(value, dict) else None
        if value is not None:
            self.interval = float(value)


configured_timer = ConfiguredTimer.decorator
