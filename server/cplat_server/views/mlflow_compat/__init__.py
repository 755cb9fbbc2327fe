"""The MLflow-compatible tracking server and model registry of ``cplat serve``.

A thin translator onto :mod:`cplat.ml.tracking`: ``common`` holds what every endpoint shares
(the ``TRACKING`` app key, MLflow's error shape, the caller, access checks); ``tracking``
(experiments, runs, logged models) and ``registry`` (registered models and versions) the
endpoints; ``artifacts`` the artifact proxy; ``routes`` the route table and the store's
cleanup context.
"""
