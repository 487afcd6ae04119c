"""Reading, validating, splitting and profiling a labelled text dataset; drift against a champion."""
