"""Preparing raw scans for segmentation: rigid co-registration, one 1 mm grid, skull stripping (all offline).

:func:`cldl.prepare.pipeline.prepare_case` does the work (``cldl prepare``, ``cldl segment --prepare``, Slicer's
"Inputs are raw scans"); :mod:`~cldl.prepare.registration` and :mod:`~cldl.prepare.brain_mask` are its two steps.
docs/prepare.md says what preparation does and how to check its result; :mod:`cldl.commands.prepare` is its command.
Nothing is imported here, so that the command line's parser stays light.
"""
