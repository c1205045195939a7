"""Serve the live page: ``python -m examples.web_events.run`` then open http://127.0.0.1:8000.

Migrates the database, starts ``celery -A examples.web_events.tasks worker -Q web_steps``
and serves the ASGI app with uvicorn until Ctrl-C, then stops the worker.
"""

from __future__ import annotations

import argparse
import sys

from examples.web_events.tasks import DATABASE_URL, QUEUE
from swf_celery.ops import migrate
from swf_celery.testing import worker_process

APP = "examples.web_events.tasks"


def main(argv: list[str] | None = None) -> int:
    try:
        import uvicorn
    except ImportError:
        print("this example needs the web extra: pip install 'swf-celery[web]'",
              file=sys.stderr)
        return 2
    from examples.web_events.web import create_app

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    migrate.migrate(DATABASE_URL)
    print(f"starting: celery -A {APP} worker -Q {QUEUE}")
    with worker_process(APP, queues=[QUEUE], concurrency=3):
        print(f"open http://{args.host}:{args.port}/ and press 'Start a run' (Ctrl-C stops)")
        uvicorn.run(create_app(DATABASE_URL), host=args.host, port=args.port,
                    log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
