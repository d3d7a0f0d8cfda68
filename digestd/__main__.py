"""`python -m digestd` runs the command line."""

from digestd.cli import main

raise SystemExit(main())
