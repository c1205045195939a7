"""Channels: persisted messages with NOTIFY, bare NOTIFY, and listeners (the seed's API).

:mod:`~swf_celery.messaging.channels` validates names and maps them to PostgreSQL's
(pure), :mod:`~swf_celery.messaging.send` stores and notifies, and
:mod:`~swf_celery.messaging.listen` listens on a dedicated connection.
"""
