"""The engine part of delivered predict.py files, one per engine (`Engine.template_path`)."""
