"""Command line interface: the ``segany`` command, implemented in :mod:`segany.cli.main`
(entry point ``segany.cli.main:main``; ``python -m segany.cli`` runs it too).

The submodule is deliberately not re-exported here: a ``main`` function in this namespace
would shadow the ``segany.cli.main`` module.
"""
