"""The HTTP layer: the application factory, one blueprint per resource, request and
response shapes declared once, authentication, metrics and error rendering."""
