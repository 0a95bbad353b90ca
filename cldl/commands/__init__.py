"""The ``cldl`` command line: :mod:`cldl.commands.main` (parser and dispatch), one module per command (its flags
and its ``run``) and :mod:`cldl.commands.common` (what they share)."""
