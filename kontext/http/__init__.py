"""HTTP doors: the one app factory, request parsing, routes, JSON errors and the OpenAPI document."""
