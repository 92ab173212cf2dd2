"""The errors a user can meet, each ending a command with one `error:` line (cli.errors) instead of a traceback."""


class TrainingError(RuntimeError):
  """The run cannot go on (NaN/inf loss, a finished run's missing output); the message says why and what was kept."""


class ConfigError(TrainingError):
  """A config value outside what the module using it accepts; the message names the key, the value and the choices."""


class WriteError(TrainingError):
  """A checkpoint or log could not be written (full disk, quota, permissions); names the path and what was kept."""


class DataError(ValueError):
  """Bad input data: the message names the file and what was expected."""
