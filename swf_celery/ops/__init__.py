"""Operations: schema migrations, the embedded development server, draining a Redis
broker into ours, and cancelling plain Celery canvases."""
