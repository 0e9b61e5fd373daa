"""Volant's guest agent: standard library only, never imports the host-side `volant` package."""

__version__ = "0.1.0"
