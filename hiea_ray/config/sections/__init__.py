"""One module per config section: its dataclass (a comment on every field: its help) and its
``rules`` (the checks between its fields and the rest of the config)."""
