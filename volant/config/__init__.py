"""Settings: one declarative table, layered files and environment, parsed once."""

from volant.config.settings import SETTINGS, Config, Setting, config_files, load_config

__all__ = ["SETTINGS", "Config", "Setting", "config_files", "load_config"]
