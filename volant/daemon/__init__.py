"""volantd: the composition root."""
