"""An example mmbench model plug-in (see ../pyproject.toml for its entry points)."""
