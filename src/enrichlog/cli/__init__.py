"""The command line (``python -m enrichlog``): demo, plan, check."""
