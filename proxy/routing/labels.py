"""A config's distinct endpoints, in the order of their columns in shared memory. Pure.

Every process of a generation must agree on which column is which endpoint: the workers' routers
count in flight, keep load reports and index prefixes by column, and the supervisor sizes the
shared memory, labels the metrics rows and carries drains across a reload by label. ``Router``
builds its endpoints from this list, and the supervisor reads it without building a Router
(which would pull the whole data path into a process that never touches a request).

The order: clusters as ``Config.all_clusters`` lists them (the default cluster, the named ones,
then the providers), each cluster's backends in config order; an endpoint that several clusters
list takes the column of its first appearance. An endpoint is known by its label (its name, or
host:port): the config check refuses one label for two different backends, so two entries with
the same label are the same endpoint. Members found by discovery are not here: they claim the
columns reserved after these (``discovery/columns.py``).
"""


def distinct_endpoints(cfg):
    """[(spec, provider)] for each distinct endpoint of ``cfg``, in column order: ``spec`` an
    EndpointConfig (or a ProviderConfig, ``provider`` True)."""
    seen = {}
    for cluster in cfg.all_clusters():
        provider = not hasattr(cluster, "backends")  # a ProviderConfig is its own one endpoint
        for spec in (cluster,) if provider else cluster.backends:
            if spec.label not in seen:
                seen[spec.label] = (spec, provider)
    return list(seen.values())


def endpoint_labels(cfg):
    """The labels of ``cfg``'s endpoints, one per column, in column order."""
    return [spec.label for spec, _ in distinct_endpoints(cfg)]
