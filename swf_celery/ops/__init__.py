"""Operations: schema migrations, the embedded development server, least-privilege grants,
draining a Redis broker into ours, and cancelling plain Celery canvases."""
