"""The one exception type for mistakes a user can fix (bad config, bad data, bad files).

The command line turns it into one line on stderr and exit status 2; anything else is a bug
and keeps its traceback. Torch-free on purpose: the sampler raises it too.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
