"""A user's own package, as clusterjobs trains it by config: a model that is not an ``nn.Sequential``
(``nets.ResMLP``), a dataset with random augmentation (``data.make_dataset``), a loss (``losses.smooth_ce``).

    PYTHONPATH=examples python -m jobs.train --config-dir examples/myconf model=resmlp data=shapes
    PYTHONPATH=examples python -m jobs.train model._target_=mylab.nets.ResMLP model.width=64 \\
        data._target_=mylab.data.make_dataset loss._target_=mylab.losses.smooth_ce loss.smoothing=0.1
"""
