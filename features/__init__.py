"""Features: computed from a canonical dataset, stored in Feast, served point-in-time and online.

Every path of the project into Feast goes through this package, so that importing it is where Feast loses
its development-time type checks (:func:`infra.patches.without_runtime_type_checks`): the ``ebr`` commands, the serving processes
and the flow runs a Prefect worker starts from a flow file alike.
"""

from infra.patches import without_runtime_type_checks

without_runtime_type_checks()
