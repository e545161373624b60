"""The pictures and widgets the notebooks show, as plain tested functions.

One module per notebook topic: `tokens` (01), `windows` (02), `fim` (03),
`training` (04), `infill` (05). Each function returns a figure or HTML and takes
its data as arguments, so a notebook cell is one call, and the same call works
without a kernel (a static picture) and inside an `ipywidgets.interact`.
"""
