"""Studies: the runs that measure the library and write docs/ (not part of the package)."""
