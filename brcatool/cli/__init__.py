"""Command-line layer: parse options, call a library function, report the result."""
