"""The Feast feature repository of the project (declarations in ``definitions``, config template in
``feature_store.yaml``). Importing this package does not import Feast."""

FEATURE_SERVICE_VERSION = "v2"  # the services of models trained now (v1 stays registered)
PROJECT = "ebr"
