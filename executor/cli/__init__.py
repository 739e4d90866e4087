"""The local command line (`start.py mine|infer|make-in`), its output formats, and the Python API."""
