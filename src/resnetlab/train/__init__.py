"""Training one variant: the trainer, one epoch's loop, the optimiser and lr schedule, the
resume checkpoint, processes under torchrun, and the events listeners (console, MLflow) hear.
"""
