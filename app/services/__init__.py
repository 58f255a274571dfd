"""Services: the application's behaviour, called by the web layer, the CLI and the worker."""
