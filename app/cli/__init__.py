"""The `folio` command line: its entry point and its subcommands."""
