"""The experiment on a cluster: the ConfigMap that the transformer pods mount.

``mlref experiment start|stop`` server-side applies ConfigMap ``experiment.config_map``
holding ``experiment.yaml``; the transformer pods mount it (optional: no experiment, no
ConfigMap needed) at the directory of ``experiment.state_file``, kubelet refreshes the file
(swapping the volume's ``..data`` symlink) and the transformer re-reads it
(:class:`mlref.experiment.assign.Watched`). Stopping applies it marked stopped, so the report
still finds when the experiment ran. The routes to each variant's model are installed with
the service (chart value ``experiment.enabled``, manifests/components/experiment).
"""

from __future__ import annotations

from typing import Any

from mlref.canary import kube
from mlref.experiment.assign import STATE_KEY, Experiment, from_yaml, to_yaml
from mlref.settings import Settings


def apply(settings: Settings, experiment: Experiment, core: Any = None) -> list[str]:
    """Put ``experiment`` in force; returns what was applied, a line each."""
    namespace, name = settings.cluster.namespace, settings.experiment.config_map
    kube.apply_config_map(
        core or kube.connect_with_core()[1], namespace, name, {STATE_KEY: to_yaml(experiment)}
    )
    state = "running" if experiment.running else "stopped"
    return [f"ConfigMap {namespace}/{name}: experiment {experiment.name} {state}"]


def read(settings: Settings, core: Any = None) -> Experiment | None:
    """The experiment the cluster's ConfigMap holds; None when none was ever started."""
    namespace, name = settings.cluster.namespace, settings.experiment.config_map
    data = kube.read_config_map(core or kube.connect_with_core()[1], namespace, name)
    return from_yaml(data[STATE_KEY]) if data and STATE_KEY in data else None
