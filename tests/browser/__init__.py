"""Browser tests (JupyterLab in headless Chromium). A package so its `conftest` does not
shadow `tests/conftest.py`, which other test modules import by name."""
