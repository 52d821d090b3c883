"""The pre/post-processing programs of delivered predict.py files, one per task (`Task.program`)."""
