"""The Feast feature repository of the project (declarations in ``definitions``, config template in
``feature_store.yaml``). Importing this package does not import Feast."""

FEATURE_SERVICE_VERSION = "v1"
PROJECT = "ebr"
