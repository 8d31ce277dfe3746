"""Sub-commands of the ``memstore`` command line, one module each (see :mod:`memstore.cli`)."""
