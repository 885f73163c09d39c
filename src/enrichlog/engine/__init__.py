"""The engine: the route of an event from the log call to its line.

``processor`` (the structlog adapter) settles on the calling thread what
needs no await and hands the rest to the ``pipeline`` (bounded queue,
in-order writing), which advances each event through the ``plan`` (levels of
guarded enrichers) on the ``runtime``'s loop and hands finished events to the
``output``. ``registry`` resolves the levels, ``lifecycle`` starts and stops
the enrichers, ``chain`` builds the structlog processors around all of it.
"""
