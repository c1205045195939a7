"""``python -m swf_celery.cli``: the ``swf-celery`` command."""

from swf_celery.cli import main

main()
