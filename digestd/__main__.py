"""`python -m digestd` runs the command line."""

from digestd.cli.main import main

# Guarded: a spawned compose worker must never run the command line again.
if __name__ == "__main__":
    raise SystemExit(main())
