"""Training pipeline for the bundled default E2Former-V2 model (issue #5).

Stages (each a CLI: ``python -m training.<stage> --help``)::

    generate  classical (amber14, flexible water) MD configurations  -> raw NPZ shards
    label     SO3LR teacher energies/forces (resumable)               -> labelled NPZ shards
    refs      per-element reference energies (least squares)         -> refs.json
    train     force-weighted training with EMA, resumable chunks      -> checkpoints + final model
    active    one active-learning round (student MD, disagreement)    -> new labelled shards

See ``docs/training.md``.
"""
