"""release-kit's shipped jinja2 templates (data only). Override any of them with ``[release] templates``."""
