"""The desktop app and the command line."""
