"""Imported once, by the DataLoader's fork server as it starts (never by anything else): the
server dies with the training process that started it (see `orphans.py`)."""
from mamba_nb.orphans import die_with_parent

die_with_parent()
