"""Analyses of data and trained models (`python -m clipjax.analysis.<name>`): studies that
drive the training loop, evaluators and exports through their Python API, and jobs over
pretraining data that read it as training does; none adds a second stack."""
