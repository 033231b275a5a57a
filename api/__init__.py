"""Composition root: settings, app factory, auth and RBAC guards, HTTP routes,
web console, CLI and the worker process. Nothing imports ``api``."""
