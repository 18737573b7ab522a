"""Errors meant for people. The CLI prints them without a traceback and exits with code 2."""


class DaptError(Exception):
    """A problem the user can fix: bad config, bad input data, a missing file.

    The message says what is wrong, where (key, file, line) and how to fix it.
    """

    exit_code = 2
    label = "error"  # how the CLI introduces the message
    on_every_process = False  # raised by every process of a launch at the same point (they can leave together)


class ConfigError(DaptError):
    """The pipeline YAML or a command-line override is invalid."""


class DataError(DaptError):
    """An input file or record cannot be used as it is."""


class TrainingError(DaptError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
