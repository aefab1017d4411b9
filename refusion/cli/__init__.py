"""Command-line tools. argparse lives here only; each command is one module."""
