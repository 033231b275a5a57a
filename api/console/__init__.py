"""The compliance console: sign-in, pages, administration, templates and static assets."""
