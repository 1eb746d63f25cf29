"""The ``fleet`` commands, one thin typer module per noun (docs/architecture.md "Adding a command").

Each module parses options, calls the importable functions of the packages beside this one, and
prints; nothing outside :mod:`fleet_cli.app` imports a module of this package.
"""
