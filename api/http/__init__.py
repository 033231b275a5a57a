"""The HTTP API: one thin controller module per resource, guards and providers."""
