class EdgepptError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
