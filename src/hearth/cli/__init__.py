"""The `hearth` command: one module per subcommand, imported only when that command runs."""
