"""``attrimp study run``: the sweep of designs on one trained model, the statistics of each
(``analyses``), the report (``report``) and the driver (``run``)."""
