"""Developer and test harness scripts; importable so tests can share them (scripts.sysbox)."""
