"""segkit's own error types: the CLI turns them into one line and exit code 2."""


class SegkitError(Exception):
    """Bad input that the user can fix: the message names the file and the entry."""


class CocoError(SegkitError):
    """An annotation file (or the images it lists) is missing, malformed or inconsistent."""


class ParameterError(SegkitError, ValueError):
    """A parameter value is out of range or unknown; the message lists what is allowed."""


class SubmissionError(SegkitError):
    """A submission CSV does not match the expected format or the test set."""
