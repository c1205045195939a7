"""Runnable examples of swf-celery; each folder has a README and a ``run`` module."""
