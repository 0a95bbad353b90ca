"""Training a CLDL model: :mod:`~cldl.training.config` (:class:`TrainConfig`), :mod:`~cldl.training.trainer`
(:class:`Trainer`: the run, its checkpoints and exact resume), :mod:`~cldl.training.cases` (training and
validation cases), :mod:`~cldl.training.sampler` (patches), :mod:`~cldl.training.validation`,
:mod:`~cldl.training.state` (random and optimiser states), :mod:`~cldl.training.prefetch` (batches drawn ahead) and
:mod:`~cldl.training.distributed` (torchrun). Nothing is imported here: config files are read by the torch-free
:mod:`cldl.config_files`.
"""
