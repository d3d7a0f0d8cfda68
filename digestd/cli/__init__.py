"""The command line: `digestd run|check|preview|status|…`, and the progress display of `run --once`."""
