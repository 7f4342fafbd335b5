"""Kept for run folders saved before segkit's layered folders: their config.py names
`segkit.components` in `custom_imports`. Importing it registers every part, as
`segkit.train` (what configs name now) does."""

import importlib

importlib.import_module("segkit.train")
