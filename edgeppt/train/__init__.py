"""The one trainer every stage uses: phases over a model, an objective per phase, seeded steps, checkpoints,
resume, an EMA, DistributedDataParallel (loop.py); the shared objectives (objective.py), augmentation
(augment.py) and evaluation (evaluate.py)."""
