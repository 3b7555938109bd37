"""The command-line client of a running tuneserve: `tuneserve datasets|jobs|models|predict|metrics`."""
