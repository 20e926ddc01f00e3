"""The `hlm` command-line entry point (subcommands per step)."""
