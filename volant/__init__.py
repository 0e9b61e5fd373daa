"""Volant: systemd-integrated microVM host service suite."""
