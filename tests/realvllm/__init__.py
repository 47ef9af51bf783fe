# A package, so this folder's conftest.py imports as `realvllm.conftest` and never
# takes the place of tests/conftest.py, whose helpers the other test modules import.
