"""Request handlers of the service, one module per API."""
