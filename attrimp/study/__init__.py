"""``attrimp study run``: the sweep of designs on one trained model (``run``), the statistics of
each table (``analyses``) and the report (``report``).

Imports point one way: ``run`` drives the stages and imports ``analyses`` and ``report``;
``report`` reads the ``analyses`` results; neither imports ``run``. Files are written through
`attrimp.io`; pages and figures are rendered by `studies.page` and `studies.plots`, the same
stack as the battery report of ``attrimp study analyze``."""
