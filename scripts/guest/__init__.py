"""The guest image builders behind scripts/build_guest.py, one module per concern."""
