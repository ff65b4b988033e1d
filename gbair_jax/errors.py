"""One exception type for bad input: `gbair` prints its one-line message and exits 2.

Raise `UserError` with a message that names the file, row, column or gin binding at fault.
"""


class UserError(Exception):
  """Bad input from the user (file, column, binding, flag); never a bug in gbair_jax."""
