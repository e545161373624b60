"""mamba-nb: train and fine-tune Mamba for code infilling (Fill-in-the-Middle) on Lance data.

The modules follow the data's path (see DESIGN.md):
corpus → tokenizer → dataset → sampler → windows → fim → model/scan → train → infill → evaluate.
Import what you need from each module; this package root imports nothing heavy.
"""

__version__ = "0.1.0"
