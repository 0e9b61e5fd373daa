"""volar: the operator's CLI."""
