"""The application around the library: CLI, callbacks, metrics, reports."""
