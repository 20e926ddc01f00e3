"""The offline->online contract: the artifact folder, its manifest and its keyword store.

Standard library only, so both the build (``models``) and the service (``service``)
depend on it and it depends on neither.
"""
