"""The MLflow-compatible tracking server and model registry of ``cplat serve``.

:mod:`~cplat_server.mlflow.common` holds what every endpoint shares (the ``TRACKING`` app key,
MLflow's error shape, the caller, access checks); :mod:`~cplat_server.mlflow.tracking` and
:mod:`~cplat_server.mlflow.registry` the endpoints; :mod:`~cplat_server.mlflow.routes` the route
table and the store's cleanup context. The store itself is :mod:`cplat.tracking`.
"""
