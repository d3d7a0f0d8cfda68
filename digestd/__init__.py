"""digestd: every subscriber's own digest of new research papers, by email."""

__version__ = "0.1.0"
