"""The central operator: watches the cluster, compiles, publishes custom resources."""
