"""``make demo``: the end-to-end example on the embedded (or configured) PostgreSQL."""

from __future__ import annotations

from swf_celery import embedded, migrate


def main() -> None:
    """Migrate and report the schema version (the workflow demo builds on this)."""
    url = embedded.database_url()
    result = migrate.migrate(url)
    print(f"database {url} at schema version {result.version}")


if __name__ == "__main__":
    main()
