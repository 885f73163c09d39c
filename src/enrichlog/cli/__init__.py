"""The command line (``python -m enrichlog``): demo, plan, check, stats, worker, dlq."""
