"""Studies over whole training runs (`python -m clipjax.analysis.<name>`): they drive the
training loop, evaluators and exports through their Python API and add no second stack."""
