"""The ``swf://`` kombu transport over pgmq (importable without the workflow layer)."""
